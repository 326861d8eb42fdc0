"""Low-memory placement (engine/offload.py) on the CPU: the compute device and the home device are both the CPU, so
the copies save nothing, but the bookkeeping is the GPU's: which blocks stay, where each block's weights are between
and during calls, how far ahead copies go, what eviction drops, and that the outputs do not change."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch
import torch.distributed as dist
from torch import nn

from engine.models.dit import DiTConfig, MultiTalkDiT
from engine.offload import (
    BlockStreamer,
    OnCallPlacement,
    PackedWeights,
    apply_low_memory,
    offload_between_stages,
    resident_block_count,
    resident_bytes,
    selfcheck,
    stream_dit,
)
from engine.parallel.selfcheck import tiny_dit_inputs
from engine.parallel.sequence import SequenceParallelDiT
from engine.presets import load_models
from engine.stages.conditioning import encode_prompts


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_dit(num_layers: int = 4) -> MultiTalkDiT:
    torch.manual_seed(0)
    config = dataclasses.replace(DiTConfig.tiny(), num_layers=num_layers)
    return MultiTalkDiT(config).eval().requires_grad_(False)


def forward(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs)


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resident_blocks_are_those_that_fit_after_the_modules_that_always_stay():
    dit = tiny_dit()
    always = params(dit) - params(dit.blocks)
    block = params(dit.blocks[0])
    assert resident_block_count(dit, 0) == 0
    assert resident_block_count(dit, always + block - 1) == 0
    assert resident_block_count(dit, always + block) == 1
    assert resident_block_count(dit, always + 3 * block + block // 2) == 3
    assert resident_block_count(dit, 10**12) == 4


@pytest.mark.parametrize("resident", [0, 2, 4])
def test_a_streamed_dit_computes_what_the_resident_one_does(resident):
    dit = tiny_dit()
    reference = copy.deepcopy(dit)
    inputs = tiny_dit_inputs(dit.config)
    budget = params(dit) - params(dit.blocks) + resident * params(dit.blocks[0])
    streamer = stream_dit(dit, persistent_params=budget, device="cpu")
    assert list(streamer.resident) == list(range(resident))
    assert list(streamer.streamed) == list(range(resident, 4))
    expected = forward(reference, inputs)
    for _ in range(2):  # the second call runs on blocks that went home after the first
        assert torch.equal(forward(dit, inputs), expected)
        assert all(streamer.pack(i).is_home() and not streamer.is_on_device(i) for i in streamer.streamed)
        assert all(streamer.pack(i) is None and streamer.is_on_device(i) for i in streamer.resident)


def test_a_streamed_block_runs_on_a_device_copy_and_at_most_one_block_is_fetched_ahead():
    dit = tiny_dit()
    streamer = stream_dit(dit, persistent_params=params(dit) - params(dit.blocks) + params(dit.blocks[0]), device="cpu")
    seen = []

    def record(index: int):
        def hook(block, args):  # registered after the streamer's hook: sees the block as it runs
            seen.append((index, streamer.pack(index) is not None and streamer.pack(index).is_home(),
                         [j for j in streamer.streamed if streamer.is_on_device(j)]))  # fmt: skip

        return hook

    for index, block in enumerate(dit.blocks):
        block.register_forward_pre_hook(record(index))
    forward(dit, tiny_dit_inputs(dit.config))
    # Block 0 is resident and prefetches block 1; each streamed block prefetches the next one while it runs.
    assert seen == [(0, False, [1]), (1, False, [1, 2]), (2, False, [2, 3]), (3, False, [3])]


class FakeEvent:
    """torch.cuda.Event's protocol on the CPU: it completes only when someone waits for it on the host."""

    def __init__(self) -> None:
        self.stream = None
        self.done = False

    def record(self, stream: FakeStream) -> None:
        self.stream = stream

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.waited: list[FakeEvent] = []

    def wait_event(self, event: FakeEvent) -> None:
        self.waited.append(event)

    def synchronize(self) -> None:
        pass


@pytest.fixture
def fake_cuda_streams(monkeypatch):
    """The CUDA stream/event calls of BlockStreamer, recorded instead of run: its overlapped path on CPU tensors."""
    compute, current = FakeStream("compute"), [None]
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream("copy"))
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0] or compute)

    @contextlib.contextmanager
    def stream(chosen):
        current[0] = chosen
        try:
            yield
        finally:
            current[0] = None

    monkeypatch.setattr(torch.cuda, "stream", stream)
    return compute


def test_overlapped_copies_are_ordered_by_events_and_bounded(fake_cuda_streams):
    dit = tiny_dit(num_layers=6)
    reference = copy.deepcopy(dit)
    inputs = tiny_dit_inputs(dit.config)
    for child in dit.children():
        if child is not dit.blocks:
            child.to("cpu")
    streamer = BlockStreamer(dit.blocks, resident=1, device="cpu", overlap=True)
    copies = []
    for block in dit.blocks:
        block.register_forward_pre_hook(lambda *_: copies.append(streamer.copies_on_device))
    expected = forward(reference, inputs)
    for _ in range(2):
        fake_cuda_streams.waited.clear()
        assert torch.equal(forward(dit, inputs), expected)
        # Compute waited once for each streamed block's copy, each recorded on the copy stream.
        waited = fake_cuda_streams.waited
        assert len(waited) == 5 and {event.stream.name for event in waited} == {"copy"}
    # The host never holds more than three block copies: running, prefetched, and the last one that ran (whose
    # compute-stream event it waits for before copying again).
    assert max(copies) == 3 and all(streamer.pack(i).is_home() for i in streamer.streamed)


def test_evicted_blocks_go_home_and_come_back_when_called():
    dit = tiny_dit()
    reference = copy.deepcopy(dit)
    inputs = tiny_dit_inputs(dit.config)
    streamer = stream_dit(dit, persistent_params=None, device="cpu", evictable=True)
    assert list(streamer.resident) == [0, 1, 2, 3]
    assert not any(streamer.is_on_device(i) for i in range(4))  # packed at home until first called
    expected = forward(reference, inputs)
    assert torch.equal(forward(dit, inputs), expected)
    assert all(streamer.is_on_device(i) and not streamer.pack(i).is_home() for i in range(4))  # they stay
    assert streamer.evict() is True
    assert all(streamer.pack(i).is_home() and not streamer.is_on_device(i) for i in range(4))
    assert streamer.evict() is False  # nothing left to drop
    assert torch.equal(forward(dit, inputs), expected)


def test_compiled_blocks_stream_without_recompiling():
    dit = tiny_dit(num_layers=2)
    inputs = tiny_dit_inputs(dit.config)
    expected = forward(copy.deepcopy(dit), inputs)
    for block in dit.blocks:  # what compile_blocks does, with a backend that compiles in seconds on a CPU
        block.compile(backend="aot_eager", dynamic=False)
    streamer = stream_dit(dit, persistent_params=0, device="cpu")
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        torch.testing.assert_close(forward(dit, inputs), expected, rtol=1e-4, atol=1e-5)
        assert all(streamer.pack(i).is_home() for i in streamer.streamed)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 1  # the blocks share one graph


def test_sequence_parallel_dit_streams_the_same_blocks():
    """SequenceParallelDiT runs the wrapped DiT's block objects on its token slice: one gloo rank is enough to show
    the hooks fire through it (tests/engine/test_parallel.py proves N ranks == 1 rank)."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dit = tiny_dit(num_layers=2)
    inputs = tiny_dit_inputs(dit.config)
    expected = forward(copy.deepcopy(dit), inputs)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parallel = SequenceParallelDiT(dit, dist.group.WORLD)
        streamer = stream_dit(dit, persistent_params=0, device="cpu")
        calls = []
        dit.blocks[1].register_forward_pre_hook(lambda block, args: calls.append(streamer.pack(1).is_home()))
        torch.testing.assert_close(forward(parallel, inputs), expected, rtol=1e-5, atol=1e-6)
        assert calls == [False] and streamer.pack(1).is_home()
    finally:
        dist.destroy_process_group()


def test_fsdp_sharded_blocks_are_refused():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dit = tiny_dit(num_layers=2)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        fully_shard(dit.blocks[0], mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(ValueError, match="FSDP"):
            stream_dit(dit, persistent_params=0, device="cpu")
    finally:
        dist.destroy_process_group()


def test_resident_bytes_counts_only_the_tensors_on_that_device():
    module = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2, device="meta"))
    module.register_buffer("scale", torch.ones(3, dtype=torch.float64))
    assert resident_bytes(module, "cpu") == (16 + 4) * 4 + 3 * 8
    assert resident_bytes(module, "meta") == (8 + 2) * 4


def test_packed_weights_share_one_aligned_buffer():
    module = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5))
    before = [p.detach().clone() for p in module.parameters()]
    pack = PackedWeights(module, "cpu", pin=False)
    starts = [start for start, *_ in pack.layout]
    assert all(start % 256 == 0 for start in starts) and starts == sorted(starts)
    assert all(torch.equal(p, b) for p, b in zip(module.parameters(), before))
    assert pack.is_home()
    copy_ = pack.home.clone()
    pack.attach(copy_)
    assert not pack.is_home() and all(torch.equal(p, b) for p, b in zip(module.parameters(), before))
    pack.detach()
    assert pack.is_home()


def test_a_model_placed_on_call_runs_with_its_weights_brought_in_and_sent_back():
    torch.manual_seed(0)
    module = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    expected = module(x).detach()
    made_room = []
    placement = OnCallPlacement(module, "cpu", before=lambda: made_room.append(True))
    inside = []
    module.register_forward_pre_hook(lambda m, args: inside.append(placement.pack.is_home()))
    with torch.inference_mode():
        assert torch.equal(module(x), expected)
    assert made_room == [True] and inside == [False] and placement.pack.is_home()


def test_offload_between_stages_sends_the_dit_home_when_another_model_runs():
    models = load_models("tiny")
    prompt_states = encode_prompts(models.t5, models.tokenizer, "a scene", "ugly", device="cpu")
    streamer = stream_dit(models.dit, persistent_params=None, device="cpu", evictable=True)
    offload_between_stages(models, streamer, "cpu")
    config = models.dit.config
    inputs = tiny_dit_inputs(config)
    forward(models.dit, inputs)
    assert all(streamer.is_on_device(i) for i in streamer.resident)
    with torch.inference_mode():
        models.vae.decode(torch.randn(1, 16, 2, 4, 4))
    assert not any(streamer.is_on_device(i) for i in streamer.resident)  # the decoder made room
    forward(models.dit, inputs)
    again = encode_prompts(models.t5, models.tokenizer, "a scene", "ugly", device="cpu")
    assert not any(streamer.is_on_device(i) for i in streamer.resident)  # so did T5
    assert torch.equal(again.prompt, prompt_states.prompt) and torch.equal(again.negative, prompt_states.negative)


def test_tiled_vae_decode_stays_close_to_the_whole_frame_decode():
    """diffusers' tiles at their real size (256 pixels every 192) on a 320-pixel frame (2x2 tiles) of the tiny VAE: the
    frames differ where tiles meet, a little on average (0.013 with these random weights)."""
    models = load_models("tiny")
    latent = torch.randn(16, 2, 40, 40, generator=torch.Generator().manual_seed(0))
    whole = models.vae.decode(latent[None])[0]
    apply_low_memory(models, persistent_params=None, offload_models=False, vae_tiling=True)
    tiled = models.vae.decode(latent[None])[0]
    assert tiled.shape == whole.shape == (3, 5, 320, 320)
    difference = (tiled - whole).abs()
    assert 0 < difference.mean() <= 0.03
    assert difference.max() <= 1.0


def test_the_gpu_selfcheck_runs_its_comparisons_on_the_cpu(capsys):
    """`python -m engine.offload --selfcheck` is meant for a GPU host; the same checks on the tiny DiT here."""
    assert selfcheck(dataclasses.replace(DiTConfig.tiny(), num_layers=4), torch.device("cpu"), latent_side=8,
                     latent_frames=3)  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count("max |diff| 0 ") == 5 and "streamed blocks at home True" in printed
