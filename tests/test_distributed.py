"""Training under torchrun (gloo on the CPU): the same model as one process, uneven epochs,
two "machines" on 127.0.0.1, signals, kills and resume. Each run trains a tiny model for a few
steps in 2 processes of 1 thread."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq_attn.batching import TokenBatchSampler, rank_share
from seq2seq_attn.checkpoint import load_checkpoint
from seq2seq_attn.config import Config, ConfigError, config_from_plain, to_plain, to_yaml
from seq2seq_attn.data import load_split
from seq2seq_attn.distributed import resolve_backend
from seq2seq_attn.loaders import iter_step_shares, make_sampler
from seq2seq_attn.rundir import read_metrics
from seq2seq_attn.session import build_tokenizer
from seq2seq_attn.train import train
from seq2seq_attn.translation import TranslationSettings, open_translator

pytestmark = pytest.mark.usefixtures("one_thread")  # as each torchrun process: same rounding

SCRIPTS = Path(sys.executable).parent
TIMEOUT = 300  # seconds: a hang fails the test instead of the suite


def tiny_config(corpus: Path, cache: Path, **train_section) -> Config:
    """A tiny Transformer on the corpus slice, fp32 on the CPU, no dropout unless asked."""
    dropout = train_section.pop("dropout", 0.0)
    num_workers = train_section.pop("num_workers", 0)
    max_tokens = train_section.pop("max_tokens", 256)
    return config_from_plain(
        {
            "data": {"src_lang": "src", "tgt_lang": "tgt", "train": str(corpus / "train"),
                     "dev": str(corpus / "dev"), "test": "", "max_tokens": max_tokens,
                     "max_length": 40, "cache_dir": str(cache), "num_workers": num_workers},
            "tokenizer": {"vocab_size": 64},
            "model": {"family": "transformer", "max_positions": 64, "dropout": dropout,
                      "transformer": {"d_model": 32, "num_heads": 4, "encoder_layers": 1,
                                      "decoder_layers": 1, "ff_size": 64,
                                      "attention_dropout": dropout}},
            "train": {"max_steps": 12, "validate_every": 0, "save_every": 0, "log_every": 1,
                      "warmup_steps": 5, "lr": 3e-3, "precision": "fp32", "device": "cpu",
                      **train_section},
            "decode": {"max_length_offset": 3},
        }
    )  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(
    config: Config,
    run_dir: Path,
    *extra: str,
    nproc: int = 2,
    launch: tuple[str, ...] = (),
    config_name: str = "",
) -> subprocess.Popen:
    """Start ``torchrun ... attn-train`` (one thread per process) and return it."""
    config_path = run_dir.parent / f"{config_name or run_dir.name}.yaml"
    config_path.write_text(to_yaml(config), encoding="utf-8")
    launch = launch or ("--standalone",)
    command = [
        str(SCRIPTS / "torchrun"), *launch, "--nproc_per_node", str(nproc),
        str(SCRIPTS / "attn-train"), str(config_path), "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
        start_new_session=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    """Wait for a launch (failing the test on a hang or an error exit); its output."""
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"torchrun hung: {process.communicate()[0][-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of a run's last.pt."""
    return load_checkpoint(run_dir / "last.pt")["model"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts' tensors."""
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (orphans)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in command:
                found.append(int(entry.name))
    return found


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen) -> None:
    """Block until the run has logged training step ``step``."""
    deadline = time.monotonic() + TIMEOUT
    while not any(record["step"] >= step for record in read_metrics(run_dir, "train")):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached the step"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A data cache shared by this module's runs."""
    return tmp_path_factory.mktemp("cache")


def batches_per_epoch(config: Config) -> int:
    """How many token batches one epoch of the config's training data has."""
    tokenizer = build_tokenizer(config, None)
    train_ds, _ = load_split(config.data, "train", tokenizer)
    return len(make_sampler(train_ds, config.data.max_tokens, seed=config.train.seed))


# ---- sharing a step between processes ------------------------------------------------------


def test_rank_shares_cut_a_step_into_contiguous_parts():
    group = [[index] for index in range(6)]
    assert [rank_share(group, rank, 3) for rank in range(3)] == [
        ([[0], [1]], False), ([[2], [3]], False), ([[4], [5]], False),
    ]  # fmt: skip
    short = [[0], [1], [2]]  # the end of an epoch: 3 batches for 2 ranks
    assert [rank_share(short, rank, 2)[0] for rank in range(2)] == [[[0]], [[1], [2]]]
    assert rank_share([[7]], 0, 2) == ([[7]], True)  # a stand-in: weighted 0
    assert rank_share([[7]], 1, 2) == ([[7]], False)


def test_step_shares_give_every_rank_the_same_number_of_steps(corpus, cache):
    config = tiny_config(corpus, cache, max_tokens=128)
    tokenizer = build_tokenizer(config, None)
    train_ds, _ = load_split(config.data, "train", tokenizer)
    epoch = make_sampler(train_ds, 128).batches(0)
    per_rank = []
    for rank in range(3):
        sampler = make_sampler(train_ds, 128)
        shares = list(iter_step_shares(train_ds, sampler, 2, rank, 3))
        assert (sampler.epoch, sampler.position) == (1, 0)
        per_rank.append(shares)
    assert len({len(shares) for shares in per_rank}) == 1  # the same step count everywhere
    for step, parts in enumerate(zip(*per_rank, strict=True)):
        real = [
            batch.indices.tolist() for part in parts if not part.stand_in for batch in part.batches
        ]
        assert real == epoch[step * 6 : step * 6 + 6]
    one = list(iter_step_shares(train_ds, make_sampler(train_ds, 128), 2))
    assert [[b.indices.tolist() for b in share.batches] for share in one] == [
        epoch[start : start + 2] for start in range(0, len(epoch), 2)
    ]


def test_sampler_advance_stops_at_the_end_of_the_epoch():
    sampler = TokenBatchSampler([3] * 8, [3] * 8, max_tokens=8)  # 4 batches of 2
    sampler.advance(3)
    assert (sampler.epoch, sampler.position) == (0, 3)
    sampler.advance(3)
    assert (sampler.epoch, sampler.position) == (0, 4)
    sampler.next_epoch()
    assert (sampler.epoch, sampler.position) == (1, 0)


def test_nccl_on_the_cpu_is_a_config_error():
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(ConfigError, match=r"train.ddp_backend.*'gloo' or 'auto'"):
        resolve_backend("nccl", torch.device("cpu"))


# ---- torchrun -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uneven(corpus, cache) -> Config:
    """A config whose epoch has an odd number of batches (its last step holds one batch for 2
    processes: a stand-in on rank 0) and that trains one epoch and a few steps more."""
    for max_tokens in range(256, 160, -8):
        config = tiny_config(corpus, cache, max_tokens=max_tokens)
        count = batches_per_epoch(config)
        if count % 2 == 1:
            return tiny_config(corpus, cache, max_tokens=max_tokens, max_steps=count // 2 + 3)
    raise AssertionError("no max_tokens gives an odd number of batches")


@pytest.fixture(scope="module")
def one_process_reference(uneven, tmp_path_factory) -> dict[str, torch.Tensor]:
    """One process accumulating 2 batches per step, over an epoch end."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(config_from_plain(to_plain_with(uneven, accumulate_steps=2)), run_dir)
    return parameters(run_dir)


def to_plain_with(config: Config, **train_section) -> dict:
    """The config as plain data with train keys replaced."""
    plain = to_plain(config)
    plain["train"] |= train_section
    return plain


def test_two_processes_train_the_model_one_process_accumulating_trains(
    uneven, one_process_reference, tmp_path
):
    run_dir = tmp_path / "ddp"
    output = finish(torchrun(uneven, run_dir))
    state = load_checkpoint(run_dir / "last.pt")
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2
    assert state["progress"]["step"] == uneven.train.max_steps  # the uneven epoch end finished
    assert state["sampler"]["epoch"] == 1  # past the epoch's end (odd: a stand-in batch)
    # equal in practice (same sums in the same order); the bound is what fp32 promises
    assert max_difference(parameters(run_dir), one_process_reference) < 1e-5, output[-2000:]
    assert "training with 2 processes (gloo)" in (run_dir / "train.log").read_text()
    # one process translates the DDP checkpoint
    translator = open_translator(
        run_dir / "last.pt", TranslationSettings(device="cpu", beam_size=1)
    )
    assert len(translator.translate(["ta zo li"])) == 1


def test_accumulating_processes_match_one_process_accumulating_all(corpus, cache, tmp_path):
    # 2 processes x 2 batches (no all-reduce on the first) against 1 x 4, for one update: later
    # updates drift apart at fp32 rounding (the sums run in another order) that Adam amplifies.
    config = tiny_config(corpus, cache, max_steps=1, accumulate_steps=2)
    finish(torchrun(config, tmp_path / "ddp"))
    train(config_from_plain(to_plain_with(config, accumulate_steps=4)), tmp_path / "one")
    assert max_difference(parameters(tmp_path / "ddp"), parameters(tmp_path / "one")) < 1e-5


def test_processes_keep_the_moving_average_one_process_keeps(corpus, cache, tmp_path):
    # every process folds the same all-reduced update into its average; rank 0's is saved
    config = tiny_config(corpus, cache, max_steps=3, ema_decay=0.5)
    finish(torchrun(config, tmp_path / "ddp"))
    train(config_from_plain(to_plain_with(config, accumulate_steps=2)), tmp_path / "one")
    ddp, one = (load_checkpoint(tmp_path / run / "last.pt") for run in ("ddp", "one"))
    assert ddp["ema_updates"] == one["ema_updates"] == 3
    assert max_difference(ddp["model"], one["model"]) < 1e-5
    assert max_difference(ddp["training_weights"], one["training_weights"]) < 1e-5
    assert max_difference(ddp["model"], ddp["training_weights"]) > 1e-4


def test_two_machines_on_one_host_train_one_model(uneven, one_process_reference, tmp_path):
    two = uneven
    run_dir, endpoint = tmp_path / "nodes", f"127.0.0.1:{free_port()}"
    nodes = [
        torchrun(
            two, run_dir, nproc=1,
            launch=("--nnodes", "2", "--node_rank", str(rank), "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", endpoint, "--rdzv_id", "test"),
        )
        for rank in range(2)
    ]  # fmt: skip
    for node in nodes:
        finish(node)
    assert max_difference(parameters(run_dir), one_process_reference) < 1e-5


def test_a_machine_with_another_config_stops_every_process(corpus, cache, tmp_path):
    config = tiny_config(corpus, cache, max_steps=3)
    other = config_from_plain(to_plain_with(config, accumulate_steps=2))
    run_dir, endpoint = tmp_path / "mixed", f"127.0.0.1:{free_port()}"
    nodes = [
        torchrun(
            node_config, run_dir, nproc=1, config_name=f"node{rank}",
            launch=("--nnodes", "2", "--node_rank", str(rank), "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", endpoint, "--rdzv_id", "mixed"),
        )
        for rank, node_config in enumerate((config, other))
    ]  # fmt: skip
    output = " ".join("".join(node.communicate(timeout=TIMEOUT)[0] for node in nodes).split())
    assert all(node.returncode != 0 for node in nodes)
    # the c10d rendezvous numbers the machines in the order they arrive, whatever --node_rank
    assert "has another config than rank 0 (config.train.accumulate_steps:" in output
    assert "1 on rank 0, 2 here" in output or "2 on rank 0, 1 here" in output
    assert "rank 1 failed: rank 1 on" in output  # what rank 0 says


def test_sigint_to_torchrun_saves_last_pt_and_resume_is_exact(corpus, cache, tmp_path):
    config = tiny_config(corpus, cache, max_steps=60, dropout=0.1, num_workers=1)
    uninterrupted = tmp_path / "uninterrupted"
    finish(torchrun(config, uninterrupted))
    stopped = tmp_path / "stopped"
    process = torchrun(config, stopped)
    wait_for_step(stopped, 8, process)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=TIMEOUT)
    assert not processes_naming(str(stopped)), "processes left behind"
    step = load_checkpoint(stopped / "last.pt")["progress"]["step"]
    assert 8 <= step < 60
    finish(torchrun(config, stopped, "--resume"))
    resumed = load_checkpoint(stopped / "last.pt")
    assert resumed["progress"]["step"] == 60
    expected = parameters(uninterrupted)
    assert all(torch.equal(resumed["model"][name], expected[name]) for name in expected)


def test_slurms_doubled_group_sigterm_saves_every_process_at_one_step(corpus, cache, tmp_path):
    config = tiny_config(corpus, cache, max_steps=100_000, num_workers=1)
    run_dir = tmp_path / "slurm"
    process = torchrun(config, run_dir, "--auto-resume")
    wait_for_step(run_dir, 8, process)
    # slurmstepd signals every process of the step: torchrun, each worker (torchrun starts them
    # in sessions of their own) and the DataLoader workers; torchrun then forwards its own
    groups = set()
    for pid in processes_naming(str(run_dir)):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for _ in range(2):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        time.sleep(0.05)
    output = process.communicate(timeout=TIMEOUT)[0]
    assert "stopped by SIGTERM" in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert not processes_naming(str(run_dir)), "processes left behind"
    logged = max(record["step"] for record in read_metrics(run_dir, "train"))
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] == logged


def test_a_killed_worker_stops_the_others_and_the_run_resumes(corpus, cache, tmp_path):
    config = tiny_config(corpus, cache, max_steps=80, save_every=5)
    run_dir = tmp_path / "killed"
    process = torchrun(config, run_dir)
    wait_for_step(run_dir, 7, process)
    workers = [pid for pid in processes_naming(str(run_dir)) if pid != process.pid]
    os.kill(max(workers), signal.SIGKILL)  # the last worker started
    process.communicate(timeout=TIMEOUT)
    assert process.returncode != 0
    deadline = time.monotonic() + 60
    while processes_naming(str(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_naming(str(run_dir)), "processes left behind"
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] >= 5
    finish(torchrun(config, run_dir, "--resume"))
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] == 80


def test_a_single_process_checkpoint_resumes_under_torchrun(corpus, cache, tmp_path):
    config = tiny_config(corpus, cache, max_steps=6)
    run_dir = tmp_path / "grow"
    train(config, run_dir)
    longer = config_from_plain(to_plain_with(config, max_steps=10))
    finish(torchrun(longer, run_dir, "--resume"))
    state = load_checkpoint(run_dir / "last.pt")
    assert (state["progress"]["step"], state["world_size"]) == (10, 2)
    log = (run_dir / "train.log").read_text()
    assert "resuming a checkpoint of 1 process(es) with 2" in log


def test_two_processes_fine_tune_as_one_process_accumulating(corpus, cache, tmp_path):
    # a run started from a trained model (--init-from) under torchrun: rank 0 loads the weights,
    # DDP hands them to rank 1, and the update is the one a single process accumulating makes
    train(tiny_config(corpus, cache, max_steps=12), tmp_path / "base")
    config = tiny_config(corpus, cache, max_steps=2)
    output = finish(torchrun(config, tmp_path / "ddp", "--init-from", str(tmp_path / "base")))
    one_process = config_from_plain(to_plain_with(config, accumulate_steps=2))
    train(one_process, tmp_path / "one", init_from=tmp_path / "base")
    assert max_difference(parameters(tmp_path / "ddp"), parameters(tmp_path / "one")) < 1e-5
    scratch = config_from_plain(to_plain_with(config, accumulate_steps=2))
    train(scratch, tmp_path / "scratch")
    assert max_difference(parameters(tmp_path / "ddp"), parameters(tmp_path / "scratch")) > 1e-3
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["origin"]["checkpoint"] == str((tmp_path / "base" / "best.pt").resolve())
    assert "starting from the weights and tokenizer of" in output
