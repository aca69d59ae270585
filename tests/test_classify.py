"""Zero-shot classification: label sets, rank sums, cache, and parity with pybioclip."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from bioindex.collection import classify_images
from bioindex.errors import BioindexError
from bioindex.models import load_model
from bioindex.search.classify import by_rank, zero_shot_probabilities
from bioindex.search.labels import (
    labels_from_strings,
    labels_from_taxa,
    labels_from_tree_of_life,
    write_tree_of_life,
)
from bioindex.taxonomy import RANKS, make_taxon
from tests.conftest import CAMERA_TRAP_SPECIES, shared

TAXA = [
    make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "leo"],
               "lion"),
    make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Felis", "catus"],
               "domestic cat"),
    make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Ursidae", "Ursus",
                "americanus"], "American black bear"),
    make_taxon(["Animalia", "Chordata", "Mammalia", "Proboscidea", "Elephantidae", "Loxodonta",
                "africana"], "African bush elephant"),
    make_taxon(["Animalia", "Chordata", "Mammalia", "Artiodactyla", "Bovidae", "Bos", "taurus"],
               "cattle"),
    make_taxon(["Animalia", "Chordata", "", "", "", "Canis", "familiaris"], "dog"),
]  # fmt: skip


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BIOINDEX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_rank_sums_match_an_independent_computation(tiny_model: str, cache_dir) -> None:
    model = load_model(tiny_model, device="cpu")
    photos = [shared("camera-trap", n) for n in ("ocelot.jpg", "american_black_bear.jpg")]
    labels = labels_from_taxa(TAXA, "test")
    for rank in ("species", "family", "order", "class"):
        predictions = classify_images(model, photos, rank=rank, k=10, labels=labels)
        for photo in photos:
            got = [(p.taxon.lineage, p.score) for p in predictions if p.file == str(photo)]
            # Independently: species probabilities, summed by the first depth names.
            image = model.embed_pil([__import__("PIL.Image").Image.open(photo).convert("RGB")])
            texts = []
            for taxon in TAXA:
                from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

                prompts = [t(taxon.text("taxonomic_common")) for t in OPENAI_IMAGENET_TEMPLATES]
                mean = model.encode_texts(prompts).mean(0)
                texts.append(mean / np.linalg.norm(mean))
            logits = model.logit_scale * image[0] @ np.stack(texts).T
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            depth = RANKS.index(rank) + 1
            sums: dict = defaultdict(float)
            for taxon, p in zip(TAXA, probs):
                if len(taxon.lineage) >= depth:
                    # a missing rank stays a bucket of its own, as in pybioclip
                    key = list(taxon.lineage[:depth])
                    while key and not key[-1]:
                        key.pop()
                    sums[tuple(key)] += p
            expected = sorted(sums.items(), key=lambda kv: -kv[1])
            assert [lineage for lineage, _ in got] == [lineage for lineage, _ in expected]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)


def test_by_rank_keeps_unknown_ranks_apart() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.1])
    families = by_rank(probs, TAXA, "family")
    assert pytest.approx(sum(families.values())) == 1.0
    assert pytest.approx(families[TAXA[0].at_rank("family")]) == 0.3  # lion + cat
    # The dog's family is unknown: its mass is not given to any named family.
    assert pytest.approx(families[make_taxon(["Animalia", "Chordata"])]) == 0.1
    assert len(families) == 5


def test_second_run_encodes_no_text(tiny_model: str, cache_dir) -> None:
    model = load_model(tiny_model, device="cpu")
    calls = []
    original = model.encode_texts
    model.encode_texts = lambda texts: calls.append(len(texts)) or original(texts)
    photo = [shared("camera-trap", "ocelot.jpg")]
    labels = labels_from_taxa(TAXA, "test")
    first = classify_images(model, photo, labels=labels, k=3)
    assert calls == [80 * len(TAXA)]
    second = classify_images(model, photo, labels=labels, k=3)
    assert calls == [80 * len(TAXA)]
    assert [p.to_dict() for p in first] == [p.to_dict() for p in second]
    # One new label: only its 80 prompts are encoded.
    more = labels_from_taxa([*TAXA, make_taxon(["Plantae", "Tracheophyta"], "")], "test")
    classify_images(model, photo, labels=more, k=3)
    assert calls == [80 * len(TAXA), 80]


def test_an_interrupted_label_encode_keeps_what_it_had_done(tiny_model: str, cache_dir,
                                                            monkeypatch) -> None:  # fmt: skip
    """10,000 names are an hour of BioCLIP's text tower on a CPU: stopped at 90%, the
    next run began again at 0. Now the cache is written as it goes; the vectors are the
    ones one uninterrupted encode gives."""
    from bioindex.search import labels as label_module

    monkeypatch.setattr(label_module, "ENCODE_CHUNK", 4, raising=False)
    monkeypatch.setattr(label_module, "CACHE_EVERY", 8, raising=False)
    model = load_model(tiny_model, device="cpu")
    names = labels_from_strings([f"Genus{i} species{i}" for i in range(30)])
    calls = []

    def stopped_at_the_fifth_chunk(texts):
        calls.append(len(texts) // 80)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return model.encode_texts(texts)

    with pytest.raises(KeyboardInterrupt):
        label_module.label_vectors(names, stopped_at_the_fifth_chunk, "key", cache_dir)
    calls.clear()
    resumed = label_module.label_vectors(names, stopped_at_the_fifth_chunk, "key", cache_dir)
    assert sum(calls) == 30 - 16  # the two writes before the stop held 16 labels
    whole = label_module.label_vectors(names, model.encode_texts, "other", cache_dir)
    np.testing.assert_allclose(resumed, whole, atol=1e-6)


def test_one_template_is_one_text_a_label_kept_apart_from_the_eighty(
        tiny_model: str, cache_dir) -> None:  # fmt: skip
    """--templates one: a long list's first run on a CPU encodes 1 text a label instead of
    80; its vectors are that text's, kept in a cache of their own (never served for the
    80-template recipe, nor it for them)."""
    from bioindex.search import labels as label_module

    model = load_model(tiny_model, device="cpu")
    names = [f"Genus{i} species{i}" for i in range(5)]
    asked: list[str] = []

    def encode(texts):
        asked.extend(texts)
        return model.encode_texts(texts)

    one = labels_from_strings(names)
    one.templates = "one"
    vectors = label_module.label_vectors(one, encode, "key", cache_dir)
    assert asked == [f"a photo of {n}." for n in names]
    np.testing.assert_allclose(vectors, model.encode_texts(asked), atol=1e-6)
    asked.clear()
    eighty = label_module.label_vectors(labels_from_strings(names), encode, "key", cache_dir)
    assert len(asked) == 80 * len(names)  # not the one-template vectors from the cache
    assert not np.allclose(eighty, vectors, atol=1e-3)
    asked.clear()
    again = label_module.label_vectors(one, encode, "key", cache_dir)
    assert not asked and np.array_equal(again, vectors)


def test_templates_choice_on_the_cli(tiny_model: str, cache_dir) -> None:
    photo = str(shared("camera-trap", "domestic_dog.jpg"))
    ran = CliRunner().invoke(main, ["classify", photo, "--labels", "dog,cat", "--templates",
                                    "one", "-m", tiny_model, "--device", "cpu"])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert "dog" in ran.stdout and "cat" in ran.stdout
    refused = CliRunner().invoke(main, ["classify", photo, "--tol", "x", "--templates", "one",
                                        "-m", tiny_model])  # fmt: skip
    assert refused.exit_code == 1
    last = refused.output.strip().splitlines()[-1]
    assert last.startswith("error: templates are for custom labels"), last


def test_tree_of_life_label_folder(tmp_path: Path, tiny_model: str, cache_dir) -> None:
    model = load_model(tiny_model, device="cpu")
    texts = [t.text("taxonomic") for t in TAXA]
    vectors = model.encode_texts(texts)
    folder = write_tree_of_life(tmp_path / "tol", TAXA, vectors)
    labels = labels_from_tree_of_life(folder, model.identity.dim)
    assert labels.names[5] == "Canis familiaris" and labels.taxa[5].class_ == ""
    np.testing.assert_allclose(labels.vectors, vectors, atol=1e-6)
    photo = shared("camera-trap", "domestic_dog.jpg")
    result = CliRunner().invoke(
        main,
        [
            "classify",
            str(photo),
            "--tol",
            str(folder),
            "--model",
            tiny_model,
            "--rank",
            "genus",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.output)
    assert abs(sum(r["score"] for r in rows) - 1.0) < 1e-5  # 6 genera, k=10: all mass
    assert {"file", "kingdom", "genus", "score"} <= set(rows[0])
    with pytest.raises(BioindexError, match="expected"):
        labels_from_tree_of_life(folder, model.identity.dim + 1)


def test_custom_label_errors(tiny_model: str, cache_dir) -> None:
    with pytest.raises(BioindexError, match="at least two"):
        labels_from_strings(["cat"])
    with pytest.raises(BioindexError, match="duplicates"):
        labels_from_strings(["cat", "cat"])
    model = load_model(tiny_model, device="cpu")
    photo = [shared("camera-trap", "ocelot.jpg")]
    with pytest.raises(BioindexError, match="no lineage"):
        classify_images(model, photo, labels=labels_from_strings(["a", "b"]), rank="family")


def test_parity_with_pybioclip_custom_labels(tiny_model_224: str, cache_dir) -> None:
    tiny_model = tiny_model_224
    predict = pytest.importorskip("bioclip.predict")
    import torch

    labels = ["ocelot", "American black bear", "African elephant", "domestic dog", "human"]
    # pybioclip wraps its model in torch.compile, which only changes speed; skipping it keeps
    # this test from spending a minute compiling on a CPU.
    original_compile = torch.compile
    torch.compile = lambda model, *a, **k: model
    try:
        reference = predict.CustomLabelsClassifier(labels, model_str=tiny_model, device="cpu")
    finally:
        torch.compile = original_compile
    reference.preprocess = predict.preprocess_img  # pybioclip's BioCLIP (squash) recipe
    model = load_model(tiny_model, device="cpu", preprocess="squash")
    photos = [
        shared("camera-trap", n)
        for n in (
            "ocelot.jpg",
            "american_black_bear.jpg",
            "african_elephants_cmyk.jpg",
            "human.jpg",
        )
    ]
    ours = classify_images(model, photos, labels=labels_from_strings(labels), k=len(labels))
    theirs = reference.predict([str(p) for p in photos], k=len(labels))
    ours_map = {(p.file, p.label): p.score for p in ours}
    assert len(theirs) == len(ours) == len(photos) * len(labels)
    for row in theirs:
        assert abs(ours_map[(row["file_name"], row["classification"])] - row["score"]) < 1e-4


def test_knn_and_combined_need_a_store(tiny_model: str, cache_dir) -> None:
    model = load_model(tiny_model, device="cpu")
    photo = [shared("camera-trap", "ocelot.jpg")]
    with pytest.raises(BioindexError, match="needs a store"):
        classify_images(model, photo, labels=labels_from_taxa(TAXA, "t"), method="knn")


def test_knn_votes_with_labelled_neighbours(tmp_path: Path, tiny_model: str, cache_dir) -> None:
    folder = shared("camera-trap")
    meta = tmp_path / "meta.csv"
    meta.write_text(CAMERA_TRAP_SPECIES)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([folder / n for n in ("ocelot.jpg", "american_black_bear.jpg",
                                        "african_elephants.jpg", "african_elephants_bw.jpg",
                                        "blank.jpg")], metadata=meta, progress=False)  # fmt: skip
        top = col.classify([folder / "african_elephants_cmyk.jpg"], method="knn", k=1)[0]
        assert top.taxon.scientific_name == "Loxodonta africana"
        families = col.classify([folder / "ocelot.jpg"], method="combined", rank="family", k=3)
        assert abs(sum(p.score for p in families) - 1.0) < 1e-5
        labels = col.catalog_labels()
        assert sorted(labels.names) == ["Leopardus pardalis", "Loxodonta africana",
                                        "Ursus americanus"]  # fmt: skip
        # Labels of one's own: the neighbours called so vote; none is, and it says so.
        with pytest.raises(BioindexError, match="no image of the store is called by any"):
            col.classify([folder / "ocelot.jpg"], method="knn", labels=["cat", "dog"])


def test_probabilities_are_a_softmax() -> None:
    probs = zero_shot_probabilities(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert probs[0, 0] > probs[0, 1]


def test_the_only_taxon_the_labels_name_is_never_called_confident(
        tmp_path: Path, tiny_model: str) -> None:  # fmt: skip
    """Camera-trap photos indexed beside a GBIF download naming one pufferfish: every photo
    was "Tetraodon fluviatilis (species), confident, 1.0000" — a softmax over one label is
    1 whatever the photo shows. Said as uncertain, with why (free labels must be two or
    more already); two labels choose as before."""
    photos = tmp_path / "trap"
    photos.mkdir()
    for name in ("ocelot.jpg", "domestic_dog.jpg"):
        (photos / name).write_bytes(shared("camera-trap", name).read_bytes())
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos, shared("dwca", "gbif-results.zip")], progress=False)
        found = col.classify([photos / "ocelot.jpg"], k=1)
        decision = found[0].decision
        assert (decision.name, decision.band) == ("Tetraodon fluviatilis", "uncertain")
        assert found[0].score == pytest.approx(1.0)
        assert "the only species the labels name" in found[0].to_dict()["answer_note"]
        # At genus the same: one genus. Two free labels are a choice: no note.
        assert col.classify([photos / "ocelot.jpg"], rank="genus")[0].decision.alone
        two = col.classify([photos / "ocelot.jpg"], labels=["ocelot", "pufferfish"],
                           min_confidence=0.0)[0]  # fmt: skip
        assert two.decision.band == "confident" and not two.decision.alone
    result = CliRunner().invoke(main, ["classify", str(photos / "ocelot.jpg"), "--store",
                                       str(tmp_path / "s")])  # fmt: skip
    assert "uncertain" in result.output and "nothing to tell it from" in result.output, (
        result.output)


CHECKLIST = ("taxonKey\tscientificName\tkingdom\tphylum\tclass\torder\tfamily\tgenus\tspecies\n"
             "1\tPanthera leo (Linnaeus, 1758)\tAnimalia\tChordata\tMammalia\tCarnivora\t"
             "Felidae\tPanthera\tPanthera leo\n"
             "2\tLeopardus pardalis (Linnaeus, 1758)\tAnimalia\tChordata\tMammalia\tCarnivora\t"
             "Felidae\tLeopardus\tLeopardus pardalis\n"
             "3\tLoxodonta africana (Blumenbach, 1797)\tAnimalia\tChordata\tMammalia\t"
             "Proboscidea\tElephantidae\tLoxodonta\tLoxodonta africana\n")  # fmt: skip


def test_a_checklist_names_the_photos_of_a_plain_folder(tmp_path: Path, tiny_model: str) -> None:
    """A GBIF species list beside a plain folder of photos. Before: `--species-list` said
    "the catalog names no taxa" with the candidates in hand, and `--labels list.tsv` read
    the table line by line — its header row was a label (and the answer, at 0.9999)."""
    from bioindex.search.place import species_list_prior

    photos = tmp_path / "trap"
    photos.mkdir()
    for name in ("ocelot.jpg", "african_elephants.jpg"):
        (photos / name).write_bytes(shared("camera-trap", name).read_bytes())
    checklist = tmp_path / "kenya.tsv"
    checklist.write_text(CHECKLIST)
    store = tmp_path / "s"
    with Collection.open(store, model=tiny_model, create=True) as col:
        col.index([photos], progress=False)
        listed = col.classify([photos / "ocelot.jpg"], k=3, place=species_list_prior(checklist))
        assert {p.taxon.scientific_name for p in listed} == {
            "Panthera leo", "Leopardus pardalis", "Loxodonta africana"}
        assert sum(p.score for p in listed) == pytest.approx(1.0, abs=1e-4)
        # At family the lineage the list gives is summed, as for the catalog's taxa.
        family = col.classify([photos / "ocelot.jpg"], k=2, rank="family",
                              place=species_list_prior(checklist))  # fmt: skip
        assert {p.taxon.family for p in family} == {"Felidae", "Elephantidae"}
    runner = CliRunner()
    by_list = runner.invoke(main, ["classify", str(photos / "ocelot.jpg"), "--store", str(store),
                                   "--species-list", str(checklist), "--format", "json"])
    assert by_list.exit_code == 0, by_list.output
    by_labels = runner.invoke(main, ["classify", str(photos / "ocelot.jpg"), "--store",
                                     str(store), "--labels", str(checklist), "--format", "json",
                                     "--no-calibrate"])  # fmt: skip
    assert by_labels.exit_code == 0, by_labels.output
    import json

    for result in (by_list, by_labels):
        rows = json.loads(result.output)
        assert {r["species"] for r in rows} <= {"Panthera leo", "Leopardus pardalis",
                                                "Loxodonta africana"}, rows  # fmt: skip
        assert all(r["family"] in ("Felidae", "Elephantidae") for r in rows)
    table = runner.invoke(main, ["classify", str(photos / "ocelot.jpg"), "--store", str(store),
                                 "--species-list", str(checklist)])  # fmt: skip
    assert "labels: the 3 species of kenya.tsv" in table.output, table.output
    # Over HTTP, as the page sends it: the list as an upload.
    import httpx

    from bioindex.serve.app import create_app
    from tests.conftest import LiveServer

    app = create_app(store, device="cpu")
    try:
        with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
            answer = client.post("/api/classify", params={"k": 3}, files=[
                ("file", ("o.jpg", (photos / "ocelot.jpg").read_bytes(), "image/jpeg")),
                ("species_list", ("kenya.tsv", CHECKLIST.encode(), "text/tab-separated-values")),
            ])  # fmt: skip
            # The same list kept as an Excel workbook (before: "not UTF-8 text").
            import openpyxl

            book = openpyxl.Workbook()
            for line in CHECKLIST.splitlines():
                book.active.append(line.split("\t"))
            book.save(tmp_path / "kenya.xlsx")
            from_excel = client.post("/api/classify", params={"k": 3}, files=[
                ("file", ("o.jpg", (photos / "ocelot.jpg").read_bytes(), "image/jpeg")),
                ("species_list", ("kenya.xlsx", (tmp_path / "kenya.xlsx").read_bytes(),
                                  "application/octet-stream")),
            ])  # fmt: skip
            broken = client.post("/api/classify", files=[
                ("file", ("o.jpg", (photos / "ocelot.jpg").read_bytes(), "image/jpeg")),
                ("species_list", ("k.xlsx", b"PK\x03\x04broken", "application/octet-stream")),
            ])  # fmt: skip
    finally:
        app.state.collection.close()
    assert answer.status_code == 200, answer.text
    assert {p["species"] for p in answer.json()["predictions"]} == {
        "Panthera leo", "Leopardus pardalis", "Loxodonta africana"}
    assert from_excel.json()["predictions"] == answer.json()["predictions"], from_excel.text
    assert broken.status_code == 400 and "not a readable Excel workbook" in broken.text


def _decide_by_hand(scores: dict, rank: str, min_confidence: float, novel: bool) -> tuple:
    """The rule as written: at each rank from `rank` up (from genus for a novel image),
    every candidate's score summed to its ancestor there; the best named total, if sure."""
    deepest = RANKS.index(rank) - (1 if novel and rank == "species" else 0)
    for level in reversed(RANKS[: deepest + 1]):
        totals: dict = defaultdict(float)
        for taxon, p in scores.items():
            if len(taxon.lineage) >= RANKS.index(level) + 1:
                totals[taxon.at_rank(level)] += p
        named = {t: p for t, p in totals.items() if t.name_at(level).strip()}
        if named:
            taxon, score = max(named.items(), key=lambda item: (item[1], item[0].lineage))
            if score >= min_confidence:
                return taxon.name_at(level), level, pytest.approx(score)
    return "unknown", "", 0.0


def test_decisions_for_many_images_follow_the_rule_for_each() -> None:
    """Every image's answer comes from one matrix product per rank (search.ranks; summing
    each image's dict took 56 ms an image over 3,000 species), and is the answer of summing
    its own candidates by hand: blank ranks, taxa that stop above the asked rank (the dog
    has no family; a bare genus; an order alone), a few candidates per image (a vote)."""
    from bioindex.search.classify import decide, decisions
    from bioindex.search.ranks import scores_from_dicts

    taxa = [*TAXA, make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae",
                                "Panthera"]),
            make_taxon(["Animalia", "Chordata", "Mammalia", "Rodentia"]),
            make_taxon(["Animalia", "Chordata", "Aves", "", "Cardinalidae", "Cardinalis",
                        "cardinalis"], "northern cardinal")]  # fmt: skip
    rng = np.random.default_rng(3)
    rows, novel = [], rng.random(300) < 0.2
    for _ in range(300):
        chosen = rng.choice(len(taxa), rng.integers(1, len(taxa) + 1), replace=False)
        weights = rng.dirichlet(np.full(len(chosen), 0.3))
        rows.append({taxa[j]: float(w) for j, w in zip(chosen, weights)})
    rows += [{TAXA[0]: 0.5, TAXA[1]: 0.5}, {TAXA[1]: 0.5, TAXA[0]: 0.5}, {}]  # ties; nothing
    novel = np.concatenate([novel, [False, False, False]])
    # Every candidate given to every image (probabilities over a label set): no masks.
    full = [{t: float(w) for t, w in zip(taxa, rng.dirichlet(np.full(len(taxa), 0.3)))}
            for _ in range(100)]  # fmt: skip
    for rank in ("species", "genus", "family", "class"):
        for min_confidence in (0.0, 0.3, 0.5, 0.9):
            got = decisions(scores_from_dicts(rows), rank, min_confidence, novel)
            every = decisions(scores_from_dicts(full), rank, min_confidence, novel[:100])
            for row, n, decision in zip(full, novel, every):
                expected = _decide_by_hand(row, rank, min_confidence, bool(n))
                assert (decision.name, decision.rank, decision.score) == expected, (row, rank)
            for i, (row, n, decision) in enumerate(zip(rows, novel, got)):
                expected = _decide_by_hand(row, rank, min_confidence, bool(n))
                assert (decision.name, decision.rank, decision.score) == expected, (row, rank)
                if i % 20 == 0 or i >= 300:  # one image at a time: the same rule
                    assert decide(row, rank, min_confidence, bool(n)) == decision
