"""Write configs/tokenizer/{vocab.json,merges.txt} from CLIP's BPE vocabulary.

The vocabulary (`bpe_simple_vocab_16e6.txt.gz`, MIT licence, OpenAI CLIP) ships in the
`open_clip_torch` wheel; get it with `pip download --no-deps open_clip_torch` and unzip
`open_clip/bpe_simple_vocab_16e6.txt.gz`.  The token ids follow CLIP's construction: the 256
byte symbols, the same with `</w>`, one token per merge, then the two special tokens
(ids 49406 and 49407).  Run once; the output is committed.

    python tools/make_tokenizer_files.py path/to/bpe_simple_vocab_16e6.txt.gz
"""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules.models.tokenizer import _byte_encoder  # noqa: E402


def main(src: str, out_dir: str = "configs/tokenizer") -> None:
    lines = gzip.open(src).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_byte_encoder().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
