// Load generator for the SendMail benchmark: keeps --concurrency structured
// SendMail calls in flight (gRPC callback API) until --messages are queued,
// then prints one JSON line with the rate. Every message is a 1 KiB
// (--size) text body from a distinct sender to one recipient.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "smtpd/v1/submission.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "smtpd control address");
ABSL_FLAG(int, concurrency, 64, "calls in flight");
ABSL_FLAG(int, messages, 20000, "messages to send");
ABSL_FLAG(int, size, 1024, "text body octets");
ABSL_FLAG(std::string, rcpt, "bob@example.com", "recipient");

namespace {

struct Load {
  smtpd::v1::Submission::Stub* stub;
  smtpd::v1::SendMailRequest base;
  int total;
  std::atomic<int> started{0};
  std::atomic<int> errors{0};
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  std::string first_error;

  void launch() {
    const int n = started.fetch_add(1);
    if (n >= total) return;
    struct Call {
      grpc::ClientContext ctx;
      smtpd::v1::SendMailRequest req;
      smtpd::v1::SendMailResponse resp;
    };
    auto* call = new Call;
    call->req = base;
    call->req.mutable_structured()->mutable_from()->set_address("sender" + std::to_string(n % 1000) + "@example.org");
    call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    stub->async()->SendMail(&call->ctx, &call->req, &call->resp, [this, call](grpc::Status s) {
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (errors.fetch_add(1) == 0) first_error = s.error_message();
      }
      delete call;
      launch();  // keep the window full
      std::lock_guard<std::mutex> lock(mu);
      if (++done == total) cv.notify_all();
    });
  }
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials(), args);
  auto stub = smtpd::v1::Submission::NewStub(channel);
  Load load;
  load.stub = stub.get();
  load.total = absl::GetFlag(FLAGS_messages);
  auto* m = load.base.mutable_structured();
  m->mutable_from()->set_address("sender@example.org");
  m->add_to()->set_address(absl::GetFlag(FLAGS_rcpt));
  m->set_subject("benchmark message");
  std::string text;
  while (static_cast<int>(text.size()) < absl::GetFlag(FLAGS_size)) text += "All work and no play makes Jack a dull boy.\n";
  text.resize(absl::GetFlag(FLAGS_size));
  m->set_text_body(text);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::fprintf(stderr, "sendmail_load: cannot connect to %s\n", absl::GetFlag(FLAGS_target).c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < absl::GetFlag(FLAGS_concurrency); ++i) load.launch();
  {
    std::unique_lock<std::mutex> lock(load.mu);
    load.cv.wait(lock, [&] { return load.done == load.total; });
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"messages\": %d, \"errors\": %d, \"seconds\": %.3f, \"per_second\": %.1f}\n", load.total,
              load.errors.load(), seconds, load.total / seconds);
  if (load.errors.load() > 0) {
    std::fprintf(stderr, "sendmail_load: %d errors, first: %s\n", load.errors.load(), load.first_error.c_str());
    return 1;
  }
  return 0;
}
