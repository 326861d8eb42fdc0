"""The VAE split by rows over gloo ranks (`engine.parallel.vae_rows`) computes what one rank computes, while each
rank's layers outside the mid blocks see only its band. Launched under torchrun by the test (3 ranks: uneven bands,
and a middle rank with neighbours on both sides); the `__main__` side runs on every rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HEIGHT, WIDTH, FRAMES = 320, 32, 9  # 40 latent rows: bands of 14, 13 and 13


def test_three_ranks_encode_and_decode_what_one_rank_does(tmp_path):
    from tests.engine.test_parallel import torchrun

    out = tmp_path / "result.json"
    run = torchrun(Path(__file__), 3, str(out), timeout_s=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["encode_error"] <= 1e-6 and result["decode_error"] <= 1e-6
    # Each rank's full-resolution layers saw its own band only: 14, 13 and 13 latent rows of 8 pixels.
    assert result["decoder_rows_seen"] == [112, 104, 104]
    assert result["encoder_rows_seen"] == [112, 104, 104]


if __name__ == "__main__":
    import torch.distributed as dist

    from engine.parallel.groups import part_from_peers
    from engine.parallel.vae_rows import row_bands_over
    from tests.engine.test_vae_parity import scaled_random_vae

    dist.init_process_group("gloo")
    vae = scaled_random_vae()  # the same weights on every rank
    generator = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, FRAMES, HEIGHT, WIDTH, generator=generator) * 2 - 1
    latents = torch.randn(1, 16, 3, HEIGHT // 8, WIDTH // 8, generator=generator)
    with torch.inference_mode():
        whole_latent, whole_video = vae.encode(video), vae.decode(latents)
        vae.row_bands = row_bands_over(dist.group.WORLD)
        seen = {"decoder": [], "encoder": []}
        vae.autoencoder.decoder.up_blocks[-1].register_forward_pre_hook(
            lambda _m, args: seen["decoder"].append(args[0].shape[3]))
        vae.autoencoder.encoder.down_blocks[0].register_forward_pre_hook(
            lambda _m, args: seen["encoder"].append(args[0].shape[3]))
        banded_latent, banded_video = vae.encode(video), vae.decode(latents)

    def error(got: torch.Tensor, expected: torch.Tensor) -> float:
        return ((got - expected).norm() / expected.norm()).item()

    mine = {"encode_error": error(banded_latent, whole_latent), "decode_error": error(banded_video, whole_video),
            "decoder_rows": max(seen["decoder"]), "encoder_rows": max(seen["encoder"])}  # fmt: skip
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if dist.get_rank() == 0:
        result = {
            "encode_error": max(r["encode_error"] for r in every),
            "decode_error": max(r["decode_error"] for r in every),
            "decoder_rows_seen": [r["decoder_rows"] for r in every],
            "encoder_rows_seen": [r["encoder_rows"] for r in every],
        }
        Path(sys.argv[1]).write_text(json.dumps(result))
    part_from_peers()  # not under a peer that still reads (gloo aborts it)
