"""The gRPC control plane from Python's grpcio against the real smtpd:
a structured message with an attachment and a non-ASCII subject reaches a
real SMTP server and parses back to the same parts; idempotency keys;
compare-and-set policy updates that change what SMTP clients see; the
queue watched from queued to delivered and from deferred to failed;
health (NOT_SERVING while draining) and reflection; TLS, mutual TLS and
role tokens."""
import email
import email.policy
import os
import signal
import smtplib
import subprocess
import time
import unittest

import grpc

import grpc_stubs as pb
from smtpd_harness import Raw
from test_relay import SinkTestCase

ADMIN = "admin-secret-token-0001"
READER = "read-secret-token-0002"
SUBMITTER = "submit-secret-token-003"


def structured_request(**overrides):
    req = pb.submission_pb2.SendMailRequest()
    m = req.structured
    m.__getattribute__("from").address = "alice@localhost"
    m.__getattribute__("from").name = "Alice Ärger"
    m.to.add(address="bob@far.test", name="Bob")
    m.subject = overrides.get("subject", "Grüße aus Köln ✓")
    m.text_body = "Hallo Bob,\nanbei der Bericht.\n"
    m.html_body = "<p>Hallo <b>Bob</b>, anbei der Bericht.</p>\n"
    m.attachments.add(filename="bericht-ü.bin", content_type="application/octet-stream",
                      content=bytes(range(256)) * 40)
    m.headers.add(name="X-Campaign", value="Frühling")
    return req


class GrpcCase(SinkTestCase):
    def channel(self):
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port('control')}")
        self.addCleanup(ch.close)
        return ch

    def stubs(self):
        ch = self.channel()
        return (pb.submission_pb2_grpc.SubmissionStub(ch), pb.queue_pb2_grpc.QueueStub(ch),
                pb.policy_pb2_grpc.PolicyStub(ch))


class GrpcTest(GrpcCase):
    def test_structured_message_reaches_the_server_and_parses_back(self):
        submit, _, _ = self.stubs()
        req = structured_request()
        req.structured.bcc.add(address="hidden@far.test")
        resp = submit.SendMail(req, timeout=10)
        self.assertEqual(len(resp.queue_id), 16)
        self.wait_for(lambda: self.sink.messages)
        got = self.sink.messages[0]
        self.assertEqual(got["from"], "alice@localhost")
        self.assertEqual(sorted(got["to"]), ["bob@far.test", "hidden@far.test"])
        msg = email.message_from_bytes(got["data"], policy=email.policy.default)
        self.assertEqual(msg["Subject"], "Grüße aus Köln ✓")
        self.assertEqual(msg["From"].addresses[0].display_name, "Alice Ärger")
        self.assertEqual(msg["Message-ID"], resp.message_id)
        self.assertEqual(msg["X-Campaign"], "Frühling")
        self.assertIsNone(msg["Bcc"])
        self.assertIn(f"with HTTP id {resp.queue_id}", msg["Received"])
        self.assertEqual(msg.get_content_type(), "multipart/mixed")
        body = msg.get_body(preferencelist=("plain",))
        # SMTP carries text with CRLF line ends (RFC 5322 2.1); compare lines.
        self.assertEqual(body.get_content().splitlines(), ["Hallo Bob,", "anbei der Bericht."])
        self.assertEqual(body.get_content_charset(), "utf-8")
        self.assertEqual(msg.get_body(preferencelist=("html",)).get_content().splitlines(),
                         ["<p>Hallo <b>Bob</b>, anbei der Bericht.</p>"])
        attachments = list(msg.iter_attachments())
        self.assertEqual(len(attachments), 1)
        self.assertEqual(attachments[0].get_filename(), "bericht-ü.bin")
        self.assertEqual(attachments[0].get_content(), bytes(range(256)) * 40)
        self.assertEqual(msg.defects, [])
        for part in msg.walk():
            self.assertEqual(part.defects, [], part.get_content_type())

    def test_raw_message_and_errors(self):
        submit, _, _ = self.stubs()
        req = pb.submission_pb2.SendMailRequest(envelope_from="alice@localhost", envelope_to=["carol@far.test"])
        req.raw.data = b"From: alice@localhost\nSubject: raw\n\nraw body\n"
        resp = submit.SendMail(req, timeout=10)
        self.wait_for(lambda: self.sink.messages)
        self.assertTrue(self.sink.messages[0]["data"].endswith(b"Subject: raw\r\n\r\nraw body\r\n"))
        self.assertIn(f"Message-ID: {resp.message_id}".encode(), self.sink.messages[0]["data"])
        bad = pb.submission_pb2.SendMailRequest(envelope_from="alice@localhost")
        bad.raw.data = b"x"
        with self.assertRaises(grpc.RpcError) as e:
            submit.SendMail(bad, timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(e.exception.details(), "envelope_to: required for a raw message")

    def test_idempotency_key_gives_one_message(self):
        submit, _, _ = self.stubs()
        req = structured_request()
        req.idempotency_key = "invoice-2026-0042"
        first = submit.SendMail(req, timeout=10)
        second = submit.SendMail(req, timeout=10)
        self.assertEqual(first.queue_id, second.queue_id)
        self.assertEqual(first.message_id, second.message_id)
        self.assertFalse(first.duplicate)
        self.assertTrue(second.duplicate)
        self.wait_for(lambda: self.sink.messages)
        self.wait_for(lambda: self.server.spool_ls() == [])
        self.assertEqual(submit.SendMail(req, timeout=10).queue_id, first.queue_id)  # after delivery, too
        time.sleep(0.5)
        self.assertEqual(len(self.sink.messages), 1)

    def test_policy_update_reaches_the_next_smtp_transaction(self):
        _, _, policy = self.stubs()
        raw = Raw(self.port())
        raw.reply()
        raw.cmd("EHLO client.test")
        self.assertTrue(raw.cmd("MAIL FROM:<x@client.test>").startswith("250"))
        self.assertEqual(raw.cmd("RCPT TO:<y@new.test>"), "554 5.7.1 <y@new.test>: Relay access denied")
        self.assertTrue(raw.cmd("RSET").startswith("250"))
        current = policy.GetPolicy(pb.policy_pb2.GetPolicyRequest(), timeout=10)
        new = pb.policy_pb2.PolicySnapshot()
        new.CopyFrom(current)
        new.relay_domains.append("new.test")
        new.max_message_size = 2000
        updated = policy.UpdatePolicy(pb.policy_pb2.UpdatePolicyRequest(policy=new, expected_version=current.version),
                                      timeout=10)
        self.assertEqual(updated.version, current.version + 1)
        # The same connection's next transaction: the new relay domain, the lower limit.
        self.assertTrue(raw.cmd("MAIL FROM:<x@client.test> SIZE=3000").startswith("552 5.3.4"))
        self.assertTrue(raw.cmd("MAIL FROM:<x@client.test>").startswith("250"))
        self.assertTrue(raw.cmd("RCPT TO:<y@new.test>").startswith("250"))
        raw.close()
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.ehlo("client.test")
            self.assertEqual(s.esmtp_features["size"], "2000")
            with self.assertRaises(smtplib.SMTPSenderRefused):  # RFC 1870 SIZE from smtplib
                s.sendmail("x@client.test", ["y@new.test"], b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n")
        # A stale version is refused and changes nothing.
        with self.assertRaises(grpc.RpcError) as e:
            policy.UpdatePolicy(pb.policy_pb2.UpdatePolicyRequest(policy=current, expected_version=current.version),
                                timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.ABORTED)
        # A bad value names its field.
        bad = pb.policy_pb2.PolicySnapshot()
        bad.CopyFrom(updated)
        bad.routes["x.test"] = "carrier:pigeon"
        with self.assertRaises(grpc.RpcError) as e:
            policy.UpdatePolicy(pb.policy_pb2.UpdatePolicyRequest(policy=bad), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("policy.routes.x.test", e.exception.details())
        # It survives a restart.
        self.server.stop()
        self.server.start()
        _, _, policy = self.stubs()
        self.assertEqual(policy.GetPolicy(pb.policy_pb2.GetPolicyRequest(), timeout=10).version, updated.version)

    def test_watch_from_queued_to_delivered(self):
        submit, queue, _ = self.stubs()
        stream = queue.WatchQueue(pb.queue_pb2.WatchQueueRequest(), timeout=30)
        stream.initial_metadata()  # the watch is in place
        resp = submit.SendMail(structured_request(), timeout=10)
        kinds = []
        for ev in stream:
            self.assertEqual(ev.id, resp.queue_id)
            kinds.append(pb.queue_pb2.QueueEvent.Kind.Name(ev.kind))
            if ev.kind == pb.queue_pb2.QueueEvent.KIND_REMOVED:
                break
        stream.cancel()
        self.assertEqual(kinds, ["KIND_QUEUED", "KIND_ATTEMPT", "KIND_DELIVERED", "KIND_REMOVED"])

    def test_manage_the_queue(self):
        submit, queue, _ = self.stubs()
        self.server.stop()
        self.server.settings["delivery.paused"] = "true"
        self.server.start()
        submit, queue, _ = self.stubs()
        ids = [submit.SendMail(structured_request(), timeout=10).queue_id for _ in range(3)]
        listed = queue.ListMessages(pb.queue_pb2.ListMessagesRequest(page_size=2), timeout=10)
        self.assertEqual([m.id for m in listed.messages], ids[:2])
        rest = queue.ListMessages(pb.queue_pb2.ListMessagesRequest(page_token=listed.next_page_token), timeout=10)
        self.assertEqual([m.id for m in rest.messages], ids[2:])
        self.assertEqual(rest.next_page_token, "")
        queue.Hold(pb.queue_pb2.Selector(id=ids[0]), timeout=10)
        msg = queue.GetMessage(pb.queue_pb2.GetMessageRequest(id=ids[0], include_body=True), timeout=10)
        self.assertTrue(msg.held)
        self.assertEqual(msg.summary.state, pb.queue_pb2.MESSAGE_STATE_HELD)
        self.assertIn(b"Subject: =?UTF-8?B?", msg.body)
        stats = queue.GetStats(pb.queue_pb2.GetStatsRequest(), timeout=10)
        self.assertEqual(stats.messages, 3)
        self.assertEqual(stats.messages_by_state["held"], 1)
        # Held messages still wait for their destination: they count.
        self.assertEqual(stats.backlog_by_destination[f"relay:127.0.0.1:{self.sink.port}"], 3)
        deleted = queue.Delete(pb.queue_pb2.DeleteRequest(
            selector=pb.queue_pb2.Selector(filter=pb.queue_pb2.Filter(state=pb.queue_pb2.MESSAGE_STATE_QUEUED))),
            timeout=10)
        self.assertEqual(sorted(deleted.ids), sorted(ids[1:]))
        with self.assertRaises(grpc.RpcError) as e:
            queue.GetMessage(pb.queue_pb2.GetMessageRequest(id=ids[1]), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(self.server.spool_ls(), [ids[0]])

    def test_health_reflection_and_drain(self):
        ch = self.channel()
        health = pb.health_pb2_grpc.HealthStub(ch)
        self.assertEqual(health.Check(pb.health_pb2.HealthCheckRequest(), timeout=10).status,
                         pb.health_pb2.HealthCheckResponse.SERVING)
        reflection = pb.reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = reflection.ServerReflectionInfo(iter([pb.reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=10)
        names = {s.name for a in answers for s in a.list_services_response.service}
        self.assertTrue({"smtpd.v1.Submission", "smtpd.v1.Queue", "smtpd.v1.Policy", "grpc.health.v1.Health"} <= names,
                        names)
        # A session in the middle of a transaction keeps the drain going.
        raw = Raw(self.port())
        raw.reply()
        raw.cmd("EHLO client.test")
        raw.cmd("MAIL FROM:<x@client.test>")
        self.server.proc.send_signal(signal.SIGTERM)
        self.server.wait_event("draining")
        self.assertEqual(health.Check(pb.health_pb2.HealthCheckRequest(), timeout=10).status,
                         pb.health_pb2.HealthCheckResponse.NOT_SERVING)
        raw.cmd("QUIT")
        raw.close()
        self.assertEqual(self.server.proc.wait(20), 0)


class GrpcExpiryTest(GrpcCase):
    settings = {**GrpcCase.settings, "queue.min_backoff": "100ms", "queue.max_backoff": "200ms",
                "queue.lifetime": "1s"}

    def test_watch_from_deferred_to_failed(self):
        submit, queue, _ = self.stubs()
        stream = queue.WatchQueue(pb.queue_pb2.WatchQueueRequest(
            filter=pb.queue_pb2.Filter(recipient="defer-me@far.test")), timeout=30)
        stream.initial_metadata()
        req = structured_request()
        del req.structured.to[:]
        req.structured.to.add(address="defer-me@far.test")
        resp = submit.SendMail(req, timeout=10)
        outcomes = []
        for ev in stream:
            if ev.id != resp.queue_id:
                continue
            if ev.kind in (pb.queue_pb2.QueueEvent.KIND_DEFERRED, pb.queue_pb2.QueueEvent.KIND_FAILED):
                outcomes.append((pb.queue_pb2.QueueEvent.Kind.Name(ev.kind), ev.reply))
            if ev.kind == pb.queue_pb2.QueueEvent.KIND_REMOVED:
                break
        stream.cancel()
        self.assertGreaterEqual(len(outcomes), 2)
        self.assertTrue(all(k == "KIND_DEFERRED" for k, _ in outcomes[:-1]), outcomes)
        self.assertEqual(outcomes[0][0], "KIND_DEFERRED")
        self.assertIn("451 4.2.1", outcomes[0][1])
        self.assertEqual(outcomes[-1][0], "KIND_FAILED")
        self.assertIn("4.4.7 Message expired in queue", outcomes[-1][1])


def make_certs(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate signed by the CA."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=folder, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=smtpd test CA", "-days", "1")
    run("req", "-x509", *ec, "-keyout", "server.key", "-out", "server.pem", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-days", "1")
    run("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=client")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "1")
    out = {}
    for n in ("ca.pem", "server.pem", "client.key", "client.pem"):
        with open(os.path.join(folder, n), "rb") as f:
            out[n] = f.read()
    return out


class GrpcTlsTokensTest(GrpcCase):
    mutual = False

    def setUp(self):
        import tempfile
        self.certdir = tempfile.mkdtemp(prefix="smtpd-certs-")
        self.addCleanup(__import__("shutil").rmtree, self.certdir, True)
        self.pem = make_certs(self.certdir)
        tokens = os.path.join(self.certdir, "tokens")
        with open(tokens, "w") as f:
            f.write(f"# test tokens\n{ADMIN} admin ops\n{READER} read dashboard\n{SUBMITTER} submit app\n")
        self.settings = {**GrpcCase.settings,
                         "control.tls_cert_file": os.path.join(self.certdir, "server.pem"),
                         "control.tls_key_file": os.path.join(self.certdir, "server.key")}
        if self.mutual:
            self.settings["control.client_ca_file"] = os.path.join(self.certdir, "ca.pem")
        else:
            self.settings["control.tokens_file"] = tokens
        super().setUp()

    def secure(self, with_client_cert=False):
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.pem["server.pem"],
            private_key=self.pem["client.key"] if with_client_cert else None,
            certificate_chain=self.pem["client.pem"] if with_client_cert else None)
        ch = grpc.secure_channel(f"127.0.0.1:{self.port('control')}", creds)
        self.addCleanup(ch.close)
        return ch

    def test_local_listener_for_the_hosts_own_tools(self):
        self.server.stop()
        self.server.settings["control.local_address"] = "127.0.0.1:0"
        self.server.settings["delivery.paused"] = "true"  # the message stays for Hold and GetMessage
        self.server.start()
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port('control-local')}")
        self.addCleanup(ch.close)
        # Plaintext, no token, admin: only the host's own processes reach it.
        resp = pb.submission_pb2_grpc.SubmissionStub(ch).SendMail(structured_request(), timeout=10)
        pb.queue_pb2_grpc.QueueStub(ch).Hold(pb.queue_pb2.Selector(id=resp.queue_id), timeout=10)
        msg = pb.queue_pb2_grpc.QueueStub(ch).GetMessage(pb.queue_pb2.GetMessageRequest(id=resp.queue_id), timeout=10)
        self.assertTrue(msg.held)
        self.assertEqual(msg.auth_user, "loopback")

    def test_plaintext_health_port_for_probes(self):
        self.server.stop()
        self.server.settings["control.health_address"] = "127.0.0.1:0"
        self.server.start()
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port('health')}")
        self.addCleanup(ch.close)
        health = pb.health_pb2_grpc.HealthStub(ch)
        self.assertEqual(health.Check(pb.health_pb2.HealthCheckRequest(), timeout=10).status,
                         pb.health_pb2.HealthCheckResponse.SERVING)
        with self.assertRaises(grpc.RpcError) as e:  # nothing but health there
            pb.queue_pb2_grpc.QueueStub(ch).GetStats(pb.queue_pb2.GetStatsRequest(), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_tokens_and_roles_over_tls(self):
        plain = pb.queue_pb2_grpc.QueueStub(self.channel())
        with self.assertRaises(grpc.RpcError) as e:
            plain.GetStats(pb.queue_pb2.GetStatsRequest(), timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)  # no plaintext
        ch = self.secure()
        queue = pb.queue_pb2_grpc.QueueStub(ch)
        submit = pb.submission_pb2_grpc.SubmissionStub(ch)
        with self.assertRaises(grpc.RpcError) as e:
            queue.GetStats(pb.queue_pb2.GetStatsRequest(), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        auth = lambda token: [("authorization", f"Bearer {token}")]  # noqa: E731
        self.assertEqual(queue.GetStats(pb.queue_pb2.GetStatsRequest(), metadata=auth(READER), timeout=10).messages, 0)
        with self.assertRaises(grpc.RpcError) as e:
            submit.SendMail(structured_request(), metadata=auth(READER), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        resp = submit.SendMail(structured_request(), metadata=auth(SUBMITTER), timeout=10)
        with self.assertRaises(grpc.RpcError) as e:
            queue.Hold(pb.queue_pb2.Selector(id=resp.queue_id), metadata=auth(SUBMITTER), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.wait_for(lambda: self.sink.messages)
        msg = email.message_from_bytes(self.sink.messages[0]["data"], policy=email.policy.default)
        self.assertIn("with HTTPS id", msg["Received"])
        self.assertIn("(Authenticated sender: app)", msg["Received"])


class GrpcMutualTlsTest(GrpcTlsTokensTest):
    mutual = True

    def test_tokens_and_roles_over_tls(self):  # replaced: mutual TLS without tokens
        queue = pb.queue_pb2_grpc.QueueStub(self.secure(with_client_cert=False))
        with self.assertRaises(grpc.RpcError) as e:
            queue.GetStats(pb.queue_pb2.GetStatsRequest(), timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)  # the handshake needs a certificate
        queue = pb.queue_pb2_grpc.QueueStub(self.secure(with_client_cert=True))
        self.assertEqual(queue.GetStats(pb.queue_pb2.GetStatsRequest(), timeout=10).messages, 0)


if __name__ == "__main__":
    unittest.main()
