"""Identification a curator can trust, on the demo world: few-shot against zero-shot and the
neighbour vote, calibration, "I don't know" for species left out of the labels, back-off to
genus, the place prior and several views of one specimen.

    python benchmarks/identify.py                      # slide-film look, 12 queries/species
    python benchmarks/identify.py --look yellow-light --queries 6
    python benchmarks/identify.py --store-draws 20     # figures over stores: 20 draws

Stores are built with the demo model from the demo world (bioindex.demo.world); queries are
drawn from seeds the stores never saw. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bioindex.demo.identify import evaluate, store_draws
from bioindex.demo.world import LOOKS


def rows(results: dict) -> list[tuple[str, str, str]]:
    """(what, figure, target from issue #19)."""
    f1, f5 = results["few_shot_1"], results["few_shot_5"]
    cal, open_set = results["calibration_5"], results["open_set_5"]
    draws = results["calibration_5_store_draws"]
    over = results["open_set_5_store_draws"]
    genera = results["open_genera_5"]
    place, views = results["place_1"], results["several_views_1"]
    events = results["bursts_identified_1"]
    clock = results["bursts_identified_1_clock"]
    frames = results["bursts_5"]["frames"]
    bursts = (("single photos", results["bursts_5"]["single"]),
              (f"{frames}-frame bursts", results["bursts_5"]["bursts"]))
    pct = "{:.1%}".format
    return [
        ("1-shot top-1: zero-shot / knn / few-shot / linear-probe",
         " / ".join(pct(f1[m]) for m in ("zero-shot", "knn", "few-shot", "linear-probe")),
         "few-shot >= zero-shot + 10 pts"),
        ("5-shot top-1: zero-shot / knn / few-shot / linear-probe",
         " / ".join(pct(f5[m]) for m in ("zero-shot", "knn", "few-shot", "linear-probe")),
         "few-shot >= zero-shot + 10 pts; > knn"),
        *((f"ECE of {m} (5-shot): before / after fitting T",
           f"{cal[m]['ece_before']:.3f} (T {cal[m]['temperature_before']:.1f}) / "
           f"{cal[m]['ece_fitted']:.3f} (T {cal[m]['temperature_fitted']:.1f})",
           "after <= 0.05") for m in ("zero-shot", "few-shot", "linear-probe")),
        ("ECE of combined (5-shot): plain average / fitted weights (text, votes)",
         f"{cal['combined']['ece_before']:.3f} / {cal['combined']['ece_fitted']:.3f} "
         f"({', '.join(f'{w:.2f}' for w in cal['combined']['weights'])})", "after <= 0.05"),
        ("ECE of knn (5-shot): the model's scale / the fitted one",
         f"{cal['knn']['ece_before']:.3f} ({cal['knn']['scale_before']:.1f}) / "
         f"{cal['knn']['ece_fitted']:.3f} ({cal['knn']['scale_fitted']:.1f})", "reported"),
        ("combined top-1 / mean confidence: plain average / fitted weights",
         f"{pct(cal['combined']['top1_before'])} / {cal['combined']['mean_confidence_before']:.2f}"
         f" / {pct(cal['combined']['top1_fitted'])} / "
         f"{cal['combined']['mean_confidence_fitted']:.2f}", "reported"),
        *((f"ECE of {m} (5-shot) over {len(draws['store_seeds'])} store draws × "
           f"{len(draws['query_seeds'])} query draws: pooled / mean of stores / each",
           f"{draws[m]['ece_pooled']:.3f} / {draws[m]['ece_mean_of_stores']:.3f} / "
           + " ".join(f"{e:.3f}" for e in draws[m]["ece_per_store"]), "after <= 0.05")
          for m in ("zero-shot", "few-shot", "linear-probe", "combined", "knn")),
        *((f"{kind} (5-shot): T few-shot / probe; ECE few-shot / probe / combined",
           f"{b['temperature_few-shot']:.1f} / {b['temperature_linear-probe']:.2f}; "
           f"{b['ece_few-shot']:.3f} / {b['ece_linear-probe']:.3f} / {b['ece_combined']:.3f}",
           "as single photos")
          for kind, b in bursts),
        *((f"{kind}: known species called novel / answered at species",
           f"{pct(b['novel_known'])} / {pct(b['species_answered'])}", "as single photos")
          for kind, b in bursts),
        ("zero-shot 'confident' answers (share wrong): model's T / fitted T",
         f"{pct(cal['zero-shot']['confident_before'])} "
         f"({pct(cal['zero-shot']['confident_but_wrong_before'])}) / "
         f"{pct(cal['zero-shot']['confident_fitted'])} "
         f"({pct(cal['zero-shot']['confident_but_wrong_fitted'])})", "reported"),
        ("open set: 'unknown' at species for held-out species",
         pct(open_set["unknown_said_for_held_out"]), ">= 80%"),
        ("open set: known species keeping a species answer",
         pct(open_set["known_keep_species_answer"]), ">= 90%"),
        (f"open set over {len(over['store_seeds'])} store draws × {len(over['query_seeds'])} "
         "query draws: 'unknown' / kept, mean; draws meeting both; stores meeting both on "
         "their mean",
         f"{pct(over['unknown_mean'])} / {pct(over['kept_mean'])}; "
         f"{over['draws_meeting_both']} of {over['draws']}; "
         f"{over['stores_meeting_both_on_their_mean']} of {len(over['store_seeds'])}",
         ">= 80% / >= 90%"),
        ("open set: AUROC known vs held-out: probability / centroid cosine / likeness",
         f"{open_set['auroc_probability']:.3f} / {open_set['auroc_centroid_cosine']:.3f} / "
         f"{open_set['auroc_likeness']:.3f}", "reported"),
        ("open set AUROC, tried: nearest labelled image",
         f"{open_set['auroc_nearest_labelled_image']:.3f}", "reported"),
        ("open set: held-out answered at genus / genus right then / at family",
         f"{pct(open_set['held_out_answered_at_genus'])} / "
         f"{pct(open_set['genus_accuracy_when_backed_off'])} / "
         f"{pct(open_set['held_out_answered_at_family'])}", "genus right >= 80%"),
        ("open set: genus discriminant right on every held-out image",
         pct(open_set["held_out_genus_right_from_discriminant"]), "reported"),
        *[(f"open set, {method}: held-out 'unknown' at species / known kept / genus right",
           f"{pct(found['unknown_said_for_held_out'])} / "
           f"{pct(found['known_keep_species_answer'])} / "
           f"{pct(found['genus_accuracy_when_backed_off'])}", "reported")
          for method, found in (("knn", results["open_set_5_knn"]),
                                ("combined", results["open_set_5_combined"]),
                                ("zero-shot (true colour)",
                                 results["open_set_5_zero_shot_true_colour"]))],
        ("open genera (3 unlabelled): named a species / a genus / family or above",
         f"{pct(genera['held_out_genera_named_to_a_species'])} / "
         f"{pct(genera['held_out_genera_named_to_a_genus'])} / "
         f"{pct(genera['held_out_genera_family_or_above'])}", "reported"),
        ("open genera: family right when answered at family",
         pct(genera["family_right_when_backed_off"]), "reported"),
        ("open genera: known species keeping a species answer",
         pct(genera["known_keep_species_answer"]), "reported"),
        ("place (1-shot few-shot): top-1 without / with --near",
         f"{pct(place['without_place'])} / {pct(place['with_near'])}", "+10 pts"),
        ("3 views (1-shot few-shot): best single / mean vector / summed log-p",
         f"{pct(views['best_single_view'])} / {pct(views['mean_vector'])} / "
         f"{pct(views['summed_log_probabilities'])}", "+5 pts over best single"),
        ("unnamed 3-frame bursts, export --identify (1-shot few-shot): right at species, "
         "each frame / by event (named at species)",
         f"{pct(events['each_frame_right'])} ({pct(events['each_frame_named'])}) / "
         f"{pct(events['by_event_right'])} ({pct(events['by_event_named'])})", "reported"),
        ("… the same frames with no eventID, only their EXIF time (bursts by the clock)",
         f"{pct(clock['each_frame_right'])} ({pct(clock['each_frame_named'])}) / "
         f"{pct(clock['by_event_right'])} ({pct(clock['by_event_named'])})", "reported"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--look", choices=LOOKS, default="slide-film")
    parser.add_argument("--queries", type=int, default=12, help="queries per species")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--store-draws", type=int, default=5,
                        help="draws of the labelled store for the figures over stores")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/identify.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    if args.store_draws < 1:
        parser.error("--store-draws must be at least 1")
    results = evaluate(args.workdir, look=args.look, per_species=args.queries,
                       store_seeds=store_draws(args.store_draws))
    results["seconds"] = round(time.perf_counter() - started, 1)
    table = rows(results)
    width = max(len(r[0]) for r in table)
    print(f"\ndemo world, look {args.look}, {args.queries} queries per species (48 species)\n")
    print(f"{'':<{width}}  {'measured':<48}  target")
    for what, figure, target in table:
        print(f"{what:<{width}}  {figure:<48}  {target}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\n{results['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
