"""VQ action tokenizer: model layout, quantizer behaviour, API, checkpoint round trip and errors."""

from __future__ import annotations

import pytest
import torch

from latentvla.errors import LatentVLAError
from latentvla.lam.action_tokenizer import ActionChunkTokenizer, ActionTokenizerModel, EMAVectorQuantizer
from latentvla.lam.action_tokenizer_checkpoint import (
    list_checkpoints,
    load_tokenizer_checkpoint,
    save_tokenizer_checkpoint,
)
from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig
from latentvla.robots import get_platform


def _model(seed=0, **kw) -> ActionTokenizerModel:
    torch.manual_seed(seed)
    return ActionTokenizerModel(ActionTokenizerConfig(**kw))


def _chunks(b=4, p=8, d=7, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, p, d, generator=g) * 2 - 1


def test_state_dict_layout_is_the_papers():
    m = _model()
    enc = set(m.encoder.state_dict())
    assert {"in_proj.weight", "conv1.weight", "conv2.weight", "conv3.weight",
            "transformer.layers.0.self_attn.in_proj_weight", "transformer.layers.1.linear2.weight"} <= enc
    assert all(k.split(".")[0] in ("in_proj", "conv1", "conv2", "conv3", "transformer") for k in enc)
    assert set(m.vq.state_dict()) == {"embedding", "cluster_size", "ema_w"}
    assert set(m.decoder.state_dict()) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert m.encoder.in_proj.weight.shape == (128, 21) and m.vq.embedding.shape == (256, 128)
    assert m.decoder.net[2].weight.shape == (7, 256)
    assert m.encoder.conv3.dilation == (4,) and m.encoder.transformer.layers[0].linear1.out_features == 256


def test_forward_loss_and_gradients():
    m = _model()
    out = m(_chunks(), generator=torch.Generator().manual_seed(0))
    assert out["codes"].shape == (4, 8) and out["recon"].shape == (4, 8, 7)
    assert out["mask_loss"] > 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.encoder.in_proj.weight.grad is not None and m.decoder.net[0].weight.grad is not None
    assert m.vq.embedding.grad is None  # the codebook moves by EMA only


def test_ema_keeps_unused_codes_reachable_and_restart_moves_dead_codes():
    vq = EMAVectorQuantizer(16, 8).train()
    before = vq.embedding.detach().clone()
    z = torch.randn(1, 64, 8) * 0.01 + before[3]  # everything lands on code 3
    for _ in range(300):
        _, codes, _ = vq(z)
    assert (codes == 3).all()
    others = torch.arange(16) != 3
    # Unused codes did not drift away (the classic EMA bug divides a decayed ema_w by ~eps).
    assert torch.allclose(vq.embedding[others], before[others], atol=1e-3)
    assert torch.allclose(vq.embedding[3], z.mean((0, 1)), atol=1e-2)
    moved = vq.restart_dead_codes(torch.randn(200, 8) * 3, generator=torch.Generator().manual_seed(0))
    assert moved == 15
    assert not torch.allclose(vq.embedding[others], before[others])
    assert vq.restart_dead_codes(torch.randn(10, 8)) == 16  # usage window was reset


def test_init_from_data_puts_codes_on_data():
    vq = EMAVectorQuantizer(32, 4)
    data = torch.randn(100, 4) + 10.0
    vq.init_from_data(data, generator=torch.Generator().manual_seed(0))
    d = torch.cdist(vq.embedding.detach(), data).min(1).values
    assert d.max() < 0.2


def test_api_encode_decode_shapes_and_inputs():
    tok = ActionChunkTokenizer(_model())
    x = _chunks()
    codes = tok.encode(x)
    assert codes.dtype == torch.long and codes.shape == (4, 8)
    assert torch.equal(tok.encode(x.numpy()), codes)
    assert torch.equal(tok.encode(x[1]), codes[1])  # unbatched
    rec = tok.decode(codes)
    assert rec.shape == (4, 8, 7) and rec.dtype == torch.float32
    assert torch.allclose(tok.decode(codes.numpy()), rec) and tok.decode(codes[0]).shape == (8, 7)
    # decode(encode(x)) is the model's own quantized reconstruction
    m = tok.model
    assert torch.allclose(rec, m.decoder(m.vq.lookup(m.vq.nearest(m.encoder(x)))), atol=1e-6)
    # batch entries are independent
    assert torch.equal(tok.encode(torch.cat([x, _chunks(3, seed=5)]))[:4], codes)
    assert (tok.codebook_size, tok.action_dim, tok.chunk_len) == (256, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast does not change the codes
        assert torch.equal(tok.encode(x), codes) and tok.decode(codes).dtype == torch.float32


def test_api_errors():
    tok = ActionChunkTokenizer(_model(), platform=get_platform("libero").to_dict(), source="tok.pt")
    with pytest.raises(LatentVLAError, match="action_dim 7"):
        tok.encode(torch.zeros(2, 8, 14))
    with pytest.raises(LatentVLAError, match="chunk length 8"):
        tok.encode(torch.zeros(2, 25, 7))
    with pytest.raises(LatentVLAError, match="NaN"):
        tok.encode(torch.full((1, 8, 7), float("nan")))
    with pytest.raises(LatentVLAError, match=r"\[0, 256\)"):
        tok.decode(torch.tensor([[0, 256]]))
    with pytest.raises(LatentVLAError, match="platform 'libero'.*'aloha'"):
        tok.check_platform(get_platform("aloha"))
    tok.check_platform(get_platform("libero"))
    with pytest.raises(LatentVLAError, match="chunk length 8"):
        ActionChunkTokenizer(_model()).check_platform({"name": "x", "chunk_len": 5, "action_dim": 7})


def test_checkpoint_round_trip(tmp_path):
    m = _model(seed=1, chunk_len=25, action_dim=14, hidden_dim=32, codebook_size=16, ffn_dim=64, decoder_hidden_dim=48)
    m.train()(_chunks(2, 25, 14))  # move the EMA buffers off their initial values
    stats = {"aloha_x": {"action": {"q01": [0.0] * 14, "q99": [1.0] * 14}}}
    path = save_tokenizer_checkpoint(tmp_path / "tokenizer_step_7.pt", m, step=7, statistics=stats,
                                     platform=get_platform("aloha").to_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer_step_7.pt"]  # no temp file left
    loaded = load_tokenizer_checkpoint(path)
    assert loaded.step == 7 and loaded.statistics == stats and loaded.platform["name"] == "aloha"
    for a, b in zip(m.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    tok = ActionChunkTokenizer.from_checkpoint(tmp_path)  # a directory: newest checkpoint
    x = _chunks(3, 25, 14)
    assert torch.equal(tok.encode(x), ActionChunkTokenizer(m).encode(x))
    assert tok.platform_name == "aloha" and tok.chunk_len == 25 and tok.codebook_size == 16
    assert [s for s, _ in list_checkpoints(tmp_path)] == [7]


def test_papers_checkpoint_without_config_loads(tmp_path):
    m = _model(seed=2)
    m.train()(_chunks())
    raw = {"encoder": m.encoder.state_dict(), "vq": m.vq.state_dict(), "decoder": m.decoder.state_dict()}
    torch.save(raw, tmp_path / "tokenizer_step_100000.pt")
    tok = ActionChunkTokenizer.from_checkpoint(tmp_path / "tokenizer_step_100000.pt")
    assert tok.chunk_len is None and tok.action_dim == 7 and tok.codebook_size == 256 and tok.platform_name is None
    x = _chunks(2)
    assert torch.equal(tok.encode(x), ActionChunkTokenizer(m).encode(x))
    tok.encode(_chunks(2, p=5))  # length unknown: any length is accepted
    with pytest.raises(LatentVLAError, match="action_dim 7"):
        tok.check_platform(get_platform("aloha"))


def test_checkpoint_errors(tmp_path):
    m = _model()
    sd = {"encoder": m.encoder.state_dict(), "vq": m.vq.state_dict()}
    torch.save(sd, tmp_path / "a.pt")
    with pytest.raises(LatentVLAError, match="lacks key.*decoder"):
        load_tokenizer_checkpoint(tmp_path / "a.pt")
    with pytest.raises(LatentVLAError, match="not found"):
        load_tokenizer_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "b.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LatentVLAError, match="cannot read"):
        load_tokenizer_checkpoint(tmp_path / "b.pt")
    save_tokenizer_checkpoint(tmp_path / "c.pt", m, step=1, statistics={}, platform=None)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    raw["config"]["action_dim"] = 14  # config says 14, weights are for 7
    torch.save(raw, tmp_path / "d.pt")
    with pytest.raises(LatentVLAError, match="shapes do not match"):
        load_tokenizer_checkpoint(tmp_path / "d.pt")
    del raw["config"]
    raw["encoder"].pop("conv2.weight")
    torch.save(raw, tmp_path / "e.pt")
    with pytest.raises(LatentVLAError, match="missing.*conv2.weight"):
        load_tokenizer_checkpoint(tmp_path / "e.pt")
    with pytest.raises(LatentVLAError, match="no tokenizer_step"):
        load_tokenizer_checkpoint(tmp_path)
