"""A receiving SMTP or LMTP server for delivery tests (Python aiosmtpd).

Recipients whose local part starts with "reject" get 550 5.1.1, with
"defer" 451 4.2.1; everything else is accepted and kept in `messages`
(envelope and the exact bytes received)."""
import socket
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Handler:
    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: no such user here" % address
        if local.startswith("defer"):
            return "451 4.2.1 <%s>: mailbox busy, try later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                  "data": envelope.original_content, "helo": session.host_name,
                                  "session": id(session)})
        if server.__class__ is LMTP:
            return "\r\n".join("250 2.0.0 <%s> delivered" % r for r in envelope.rcpt_tos)
        return "250 2.0.0 OK: queued"


class Sink:
    def __init__(self, port=None, lmtp=False, host="127.0.0.1"):
        self.host = host
        self.port = port or free_port()
        self.handler = Handler()
        self.lmtp = lmtp
        self.controller = None

    def start(self):
        lmtp = self.lmtp

        class Ctl(Controller):
            def factory(self):
                cls = LMTP if lmtp else SMTP
                return cls(self.handler, enable_SMTPUTF8=True, decode_data=False)

        self.controller = Ctl(self.handler, hostname=self.host, port=self.port)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self):
        with self.handler.lock:
            return list(self.handler.messages)
