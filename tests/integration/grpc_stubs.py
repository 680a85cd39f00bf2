"""Python stubs for smtpd.v1 (and grpc.health.v1, reflection), generated at
test time with protoc and grpc_python_plugin into a temporary folder. The
.proto files are copied into a flat folder first: a generated package named
"grpc" or "smtpd" would shadow grpcio or the standard library."""
import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto", "smtpd", "v1")
GRPC_PROTO = "/usr/share/grpc-proto/grpc"

_out = tempfile.mkdtemp(prefix="smtpd-stubs-")
atexit.register(shutil.rmtree, _out, True)
_flat = os.path.join(_out, "src")
os.makedirs(_flat)
_files = {name: os.path.join(PROTO, name) for name in ("submission.proto", "queue.proto", "policy.proto")}
_files["health.proto"] = os.path.join(GRPC_PROTO, "health", "v1", "health.proto")
_files["reflection.proto"] = os.path.join(GRPC_PROTO, "reflection", "v1alpha", "reflection.proto")
for name, path in _files.items():
    shutil.copy(path, os.path.join(_flat, name))
subprocess.run(["protoc", "-I", _flat, "--python_out", _out, "--grpc_python_out", _out,
                "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"] + sorted(_files),
               check=True, timeout=120)
sys.path.insert(0, _out)

submission_pb2 = importlib.import_module("submission_pb2")
submission_pb2_grpc = importlib.import_module("submission_pb2_grpc")
queue_pb2 = importlib.import_module("queue_pb2")
queue_pb2_grpc = importlib.import_module("queue_pb2_grpc")
policy_pb2 = importlib.import_module("policy_pb2")
policy_pb2_grpc = importlib.import_module("policy_pb2_grpc")
health_pb2 = importlib.import_module("health_pb2")
health_pb2_grpc = importlib.import_module("health_pb2_grpc")
reflection_pb2 = importlib.import_module("reflection_pb2")
reflection_pb2_grpc = importlib.import_module("reflection_pb2_grpc")
