"""How often the served model's out-of-distribution flag is raised: on its own held-out
images (from the final_model stage's calibration) and on a face set it was never trained on.

    python benchmarks/ood_rates.py --model artifacts/final_model --faces /path/to/other/faces \\
        --name CK+48 --out benchmarks/results/ood.json

``--faces``: a folder of face photos (searched recursively), e.g. CK+48 (981 48x48 frames of
118 people; not redistributable, so never committed: pass your own copy). Every image is
classified with the face check off (so small or hard photos still get a distance) and once
with it on (how many have a face the ingest detector finds). Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ferpipe.io import write_json
from ferpipe.predict import collect_files
from ferpipe.serving import FerPredictor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("artifacts/final_model"), help="final_model folder")
    ap.add_argument("--faces", type=Path, required=True, help="folder of face photos the model was not trained on")
    ap.add_argument("--name", default="", help="the face set's name, recorded in the output")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pred = FerPredictor.load(args.model)
    if pred.ood_reference is None:
        print(f"ood_rates: {args.model} has no OOD reference (run the final_model stage with --plan)", file=sys.stderr)
        return 2
    files = [f for _name, f, err in collect_files([str(args.faces)]) if not err]
    if not files:
        print(f"ood_rates: no image files under {args.faces}", file=sys.stderr)
        return 2
    t0 = time.time()
    blobs = [f.read_bytes() for f in files]
    rows = []
    for s in range(0, len(blobs), 64):
        rows += pred.predict_bytes(blobs[s : s + 64], face_check=False)
    checked = []
    for s in range(0, len(blobs), 64):
        checked += pred.predict_bytes(blobs[s : s + 64], face_check=True)
    ok = [r for r in rows if not r["error"]]
    flags = np.array([r["out_of_distribution"] for r in ok], dtype=bool)
    with_face = np.array([not r["error"] for r in checked], dtype=bool)
    flags_face = np.array([r["out_of_distribution"] for r, c in zip(rows, checked, strict=True) if not c["error"]], dtype=bool)
    ood = pred.meta["ood"]
    out = {
        "model": str(args.model), "method": pred.meta.get("method"), "threshold": ood["threshold"],
        "held_out": {"protocol": ood["protocol"], "run": ood["run"], "validation_flag_rate": ood["validation_flag_rate"],
                     "test_flag_rate": ood["test_flag_rate"]},
        "other_faces": {"name": args.name or args.faces.name, "n_images": len(files), "n_classified": len(ok),
                        "flag_rate": float(flags.mean()) if len(flags) else None,
                        "distance_median": float(np.median([r["ood_distance"] for r in ok])) if ok else None,
                        "face_found_rate": float(with_face.mean()),
                        "flag_rate_among_faces_found": float(flags_face.mean()) if len(flags_face) else None},
        "seconds": round(time.time() - t0, 1),
    }  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.out:
        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
