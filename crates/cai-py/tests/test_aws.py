"""`cai.run(engine="aws")` against moto (S3 and Step Functions on loopback), as the CLI's
AWS tests use it: the execution it starts gets the same payload as `cai run --engine aws`
with the same options, it is recorded at the results location, and `cai.attach` follows
it to its end through the same engine.

moto here records executions without running them (the CLI's workflow test runs the whole
state machine on Lambda emulators); what runs the ranks is the CLI's to test.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import cai
from conftest import need

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto(monkeypatch_module):
    """A moto server (the system python3's `moto[server]`, as the CLI's tests start it) and
    this process's AWS environment pointed at it."""
    py = "python3"
    probe = subprocess.run([py, "-c", "import moto.server, boto3, flask"], capture_output=True)
    if probe.returncode != 0:
        need('python3 with moto[server] (pip install "moto[server]")')
    port = _free_port()
    proc = subprocess.Popen([py, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    t = time.monotonic()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() - t < 60, "moto did not start"
            time.sleep(0.05)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch_module.delenv(k, raising=False)
    for k, v in {**ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch_module.setenv(k, v)
    yield endpoint
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def boto(code, *args):
    """Run a boto3 snippet (`s3`, `sf` clients of moto) in the system python3; its stdout."""
    script = ("import sys, os, json, boto3\n"
              "e = os.environ['AWS_ENDPOINT_URL']\n"
              "s3 = boto3.client('s3', endpoint_url=e)\n"
              "sf = boto3.client('stepfunctions', endpoint_url=e)\n" + code)
    out = subprocess.run(["python3", "-c", script, *map(str, args)], capture_output=True,
                         text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    return out.stdout


def new_state_machine(cai_bin, work, name):
    """The state machine `cai aws state-machine` writes, created in moto; its ARN."""
    sm = work / f"{name}.json"
    subprocess.run(
        [str(cai_bin), "--quiet", "aws", "state-machine", "--data", "s3://cai-data/parts",
         "--results", "s3://cai-results/x", "--model", "s3://cai-results/model.safetensors",
         "--region", "us-east-1", "--account", "123456789012", "--out", str(sm)],
        check=True)
    return boto("print(sf.create_state_machine(name=sys.argv[2], definition=open(sys.argv[1])"
                ".read(), roleArn='arn:aws:iam::123456789012:role/cai')['stateMachineArn'])",
                sm, name).strip()


def execution_input(arn):
    return json.loads(boto("print(sf.describe_execution(executionArn=sys.argv[1])['input'])",
                           arn))


def test_aws_run_starts_the_workflow_as_the_cli_does(moto, cai_bin, dataset, model_path, work):
    boto("s3.create_bucket(Bucket='cai-data'); s3.create_bucket(Bucket='cai-results')")
    info = cai.partition(dataset, "s3://cai-data/parts", size="600KB")
    assert info["partitions"] >= 3
    arn = new_state_machine(cai_bin, work, "py")
    opts = dict(batch_size=16, world_size=2, file_limit=3)
    handle = cai.run("s3://cai-data/parts", "s3://cai-results/py", None, engine="aws",
                     aws_state_machine=arn, wait=False, **opts)
    assert isinstance(handle, cai.Run) and handle.engine == "aws"
    assert handle.results == "s3://cai-results/py"
    # Recorded beside the results, for cai.attach / `cai status` to find.
    record = json.loads(cai._native.read_object("s3://cai-results/py", "aws/execution.json"))
    execution = record["execution"]
    assert execution.startswith("arn:aws:states:us-east-1:") and record["region"] == "us-east-1"
    got = execution_input(execution)
    # The CLI, same options, another state machine: the same payload.
    arn2 = new_state_machine(cai_bin, work, "cli")
    out = subprocess.run(
        [str(cai_bin), "run", "--engine", "aws", "--aws-state-machine", arn2, "--data",
         "s3://cai-data/parts", "--results", "s3://cai-results/py", "--batch-size", "16",
         "--world-size", "2", "--file-limit", "3", "--detach"],
        capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    cli = json.loads(cai._native.read_object("s3://cai-results/py", "aws/execution.json"))
    assert cli["execution"] != execution
    want = execution_input(cli["execution"])
    assert got == want
    assert got["batch_size"] == 16 and got["world_size"] == 2 and got["data_bucket"] == "cai-data"

    # Stopped (moto does not run it) before any rank wrote a result: following it through
    # the AWS engine ends without a summary, which is an error naming the results.
    boto("sf.stop_execution(executionArn=sys.argv[1])", cli["execution"])
    with pytest.raises(cai.CaiError, match="s3://cai-results/py.*without a summary"):
        cai.attach("s3://cai-results/py", progress=False, poll=0.1)


def test_aws_run_refuses_local_locations_and_bad_options(moto, model_path, work):
    with pytest.raises(cai.CaiError, match="--data must be an s3://"):
        cai.run(work / "parts", "s3://cai-results/r", model_path, engine="aws",
                aws_state_machine="arn:aws:states:us-east-1:123456789012:stateMachine:x",
                progress=False)
    with pytest.raises(ValueError, match="poll"):
        cai.run("s3://cai-data/parts", "s3://cai-results/r", model_path, engine="aws",
                aws_state_machine="arn:x", poll=0)
