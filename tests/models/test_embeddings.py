"""Textual-inversion embeddings: the file layouts, the listing, hashes, safety and the prompt hook."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.models import embeddings as ti
from modules.models.checkpoints import load_model
from tests.helpers.network_files import write_fsynced_checkpoint, write_malicious


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    ckpt = write_fsynced_checkpoint(tmp_path_factory.mktemp("ti-ckpt"), "tiny-depth", seed=1)
    return load_model(ckpt.path)


@pytest.fixture()
def emb_dir(tmp_path) -> Path:
    d = tmp_path / "embeddings"
    d.mkdir()
    return d


def token_vectors(model, words: str) -> torch.Tensor:
    """The token embeddings of `words` as the text encoder has them."""
    ids = torch.tensor(model.tokenizer.encode(words))
    return model.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def a1111_pt(vectors: torch.Tensor, step: int = 500) -> dict:
    """What A1111's Embedding.save writes."""
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "x", "step": step,
            "sd_checkpoint": "abcdef1234", "sd_checkpoint_name": "tiny-depth"}  # fmt: skip


def database(model, folder: Path) -> ti.EmbeddingDatabase:
    db = ti.EmbeddingDatabase([folder])
    db.refresh(model.tokenizer, model.text_encoder.config.hidden_size)
    return db


def encode_with_embeddings(model, db: ti.EmbeddingDatabase, prompt: str) -> torch.Tensor:
    """What the prompt encoder will do: expand, lay out, pad to 77 ids, encode with the vectors injected."""
    ids, fixes = ti.layout(db.expand(model.tokenizer.encode(prompt)))
    row = torch.tensor([model.tokenizer.pad_chunk(ids)])
    with ti.inject(model.text_encoder, [[(offset + 1, vec) for offset, vec in fixes]]):
        return model.encode_tokens(row)


def test_every_file_layout_loads_and_the_listing_is_a1111s(model, emb_dir):
    torch.save(a1111_pt(torch.randn(3, 128)), emb_dir / "three.pt")
    save_file({"emb_params": torch.randn(2, 128)}, str(emb_dir / "safe.safetensors"))
    torch.save({"<cat-toy>": torch.randn(128)}, emb_dir / "cattoy.bin")
    legacy = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, 128))})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": legacy}, emb_dir / "legacy.pt")
    (emb_dir / "sub").mkdir()
    torch.save(a1111_pt(torch.randn(4, 768), step=9), emb_dir / "sub" / "sd1only.pt")
    db = database(model, emb_dir)
    listing = db.listing()
    assert set(listing) == {"loaded", "skipped"}
    assert listing["loaded"]["three"] == {"step": 500, "sd_checkpoint": "abcdef1234", "sd_checkpoint_name": "tiny-depth",
                                          "shape": 128, "vectors": 3}  # fmt: skip
    assert listing["loaded"]["safe"]["vectors"] == 2 and listing["loaded"]["cattoy"]["vectors"] == 1
    assert listing["loaded"]["legacy"]["vectors"] == 1
    assert listing["skipped"] == {"sd1only": {"step": 9, "sd_checkpoint": "abcdef1234",
                                              "sd_checkpoint_name": "tiny-depth", "shape": 768, "vectors": 4}}  # fmt: skip
    assert not db.failed
    key = db.key
    assert db.refresh(model.tokenizer, 128) is False and db.key == key  # nothing changed: no rescan
    assert db.refresh(model.tokenizer, 768) is True and set(db.listing()["loaded"]) == {"sd1only"}
    assert db.key != key


def test_an_embedding_of_two_words_encodes_as_those_words(model, emb_dir):
    torch.save(a1111_pt(token_vectors(model, "red dog")), emb_dir / "duo.pt")
    db = database(model, emb_dir)
    expected = model.encode_tokens(model.tokenizer(["a red dog on grass"]))
    got = encode_with_embeddings(model, db, "a duo on grass")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    plain = model.encode_tokens(model.tokenizer(["a duo on grass"]))
    assert not torch.allclose(plain, expected, atol=1e-3)  # without the hook the name is just a word
    after = model.encode_tokens(model.tokenizer(["a duo on grass"]))
    assert torch.equal(after, plain)  # the hook is gone after the block


def test_names_match_as_whole_token_runs_longest_first(model, emb_dir):
    torch.save(a1111_pt(torch.randn(1, 128)), emb_dir / "zebra.pt")
    torch.save(a1111_pt(torch.randn(2, 128)), emb_dir / "zebra-stripes.pt")
    db = database(model, emb_dir)
    tok = model.tokenizer
    items = db.expand(tok.encode("zebra-stripes and zebra, zebras"))
    names = [i.name for i in items if isinstance(i, ti.Embedding)]
    assert names == ["zebra-stripes", "zebra"]  # 'zebras' is another token: no match
    assert len(tok.encode("zebra-stripes")) > 1
    ids, fixes = ti.layout(items)
    assert [offset for offset, _ in fixes] == [0, 2 + len(tok.encode("and"))] and ids[:2] == [0, 0]  # 2 vectors
    assert sum(ti.slots(i) for i in items) == len(ids)
    hashes = {n: db.loaded[n].shorthash for n in ("zebra-stripes", "zebra")}
    assert ti.ti_hashes(ti.used(items)) == f"zebra-stripes: {hashes['zebra-stripes']}, zebra: {hashes['zebra']}"


def test_hash_is_the_files_sha256(model, emb_dir):
    torch.save(a1111_pt(torch.randn(1, 128)), emb_dir / "x,y.pt")
    db = database(model, emb_dir)
    emb = db.loaded["x,y"]
    assert emb.sha256 == hashlib.sha256((emb_dir / "x,y.pt").read_bytes()).hexdigest()
    assert ti.ti_hashes([emb, emb]) == f"xy: {emb.sha256[:12]}"


def test_malicious_embedding_is_refused_without_running_code(model, emb_dir, tmp_path):
    marker = tmp_path / "pwned"
    write_malicious(emb_dir / "evil.pt", marker, a1111_pt(torch.randn(1, 128)))
    write_malicious(emb_dir / "evil2.bin", marker, {"<t>": torch.randn(128)}, zip_format=False)
    torch.save(a1111_pt(torch.randn(1, 128)), emb_dir / "good.pt")
    db = database(model, emb_dir)
    assert not marker.exists()
    assert set(db.failed) == {"evil", "evil2"} and "Refused" in db.failed["evil"]
    assert set(db.loaded) == {"good"}
