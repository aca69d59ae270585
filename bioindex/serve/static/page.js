const $ = (id) => document.getElementById(id);
const FIELDS = ["q", "rank", "rankvalue", "folder", "institution", "country", "from", "to"];

function filters() {
  const where = [];
  if ($("rank").value && $("rankvalue").value.trim()) where.push($("rank").value + "=" + $("rankvalue").value.trim());
  if ($("folder").value.trim()) where.push("folder=" + $("folder").value.trim());
  if ($("institution").value.trim()) where.push("institution_code=" + $("institution").value.trim());
  if ($("country").value.trim()) where.push("country_code=" + $("country").value.trim());
  if ($("from").value.trim()) where.push("event_date>=" + $("from").value.trim());
  if ($("to").value.trim()) where.push("event_date<=" + $("to").value.trim());
  return where;
}

function params(extra) {
  const p = new URLSearchParams(extra);
  for (const w of filters()) p.append("where", w);
  if ($("group").checked) p.set("group_by", "occurrence");
  return p;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}

// A Creative Commons URL (what Camtrap DP and GBIF write) as its short name, which fits
// a card: "http://creativecommons.org/licenses/by-nc/4.0/" → "CC BY-NC 4.0".
function licenceName(text) {
  const cc = /creativecommons\.org\/(licenses|publicdomain)\/([a-z-]+)\/(\d+\.\d+)/i.exec(String(text));
  if (!cc) return String(text);
  if (cc[1].toLowerCase() === "publicdomain") return cc[2].toLowerCase() === "zero" ? `CC0 ${cc[3]}` : `Public Domain Mark ${cc[3]}`;
  return `CC ${cc[2].toUpperCase()} ${cc[3]}`;
}

// A card is headed by the record's name: its scientific name, else the common name a
// camera trap's records carry alone ("zebra"), else the photo's path.
function card(r) {
  const file = String(r.path || "").split("/").pop();
  const name = r.scientific_name || r.vernacular_name;
  return `
    <div class="card" data-id="${r.image_id}" data-catalog="${esc(r.catalog_number)}" data-match="${esc(r.match || "")}">
      ${r.file_missing ? `<div class="gone">file missing: moved or deleted since it was indexed</div>`
        : `<img loading="lazy" alt="${esc(name || file || "image " + r.image_id)}" src="/api/thumbnails/${r.image_id}?size=256">`}
      <div>${name ? `<span class="name${r.scientific_name ? "" : " common"}">${esc(name)}</span>` : `<span class="path">${esc(r.path || "")}</span>`}
        ${r.images > 1 ? `<span class="badge">${r.images} images</span>` : ""}</div>
      <div class="meta">${r.kind ? KINDS[r.kind](r) : "score " + Number(r.score).toFixed(3)}${r.catalog_number ? " · " + esc(r.catalog_number) : ""}</div>
      ${name ? `<div class="path">${esc(r.path || "")}</div>` : ""}
      <div class="meta">${esc(r.institution_code || "")} ${esc(r.country_code || "")} ${esc(r.event_date || "")}</div>
      <div class="meta rights">${r.license ? `licence <span title="${esc(r.license)}">${esc(licenceName(r.license))}</span>` : ""}${r.rights_holder ? " · © " + esc(r.rights_holder) : ""}</div>
      ${/^https?:\/\//.test(r.occurrence_url || "") ? `<a class="record" href="${esc(r.occurrence_url)}" target="_blank" rel="noopener noreferrer">occurrence record</a>` : ""}
    </div>`;
}

// A near-duplicate group's members: its anchor, then its copies by how close they are.
const KINDS = {
  anchor: () => "the group's first image",
  exact: () => "the same bytes",
  near: (r) => "cosine " + Number(r.score).toFixed(3) + " to the first",
};

// Groups of near-duplicates, most images first, a page at a time ("more" adds the next).
async function duplicates(push, offset = 0) {
  const threshold = new URLSearchParams(location.search).get("duplicates") || "0.95";
  if (push) history.pushState(null, "", "?" + new URLSearchParams({duplicates: threshold}));
  status(offset ? "Loading more groups…" : "Finding near-duplicates (a large collection takes a minute the first time)…");
  $("prediction").style.display = "none";
  try {
    const body = await getJSON("/api/duplicates?" + new URLSearchParams({threshold, offset, limit: 20}));
    const html = body.results.map((g) => `
      <section class="list" data-kind="duplicates" data-group="${g.group}"><h2>${g.images} images
        <small>cosine ≥ ${body.threshold} to the first</small></h2>
        <div class="results">${g.members.map(card).join("")}</div></section>`).join("");
    if (!offset) $("results").innerHTML = "";
    $("more")?.remove();
    $("results").insertAdjacentHTML("beforeend", html);
    const shown = offset + body.results.length;
    if (shown < body.groups) {
      $("results").insertAdjacentHTML("beforeend", `<button type="button" id="more" class="more">${body.groups - shown} more groups</button>`);
      $("more").addEventListener("click", () => duplicates(false, shown));
    }
    status(body.groups
      ? `${body.groups} groups of near-duplicates (${body.images} images) at cosine ≥ ${body.threshold}`
      : `No near-duplicates at cosine ≥ ${body.threshold}.`);
  } catch (error) {
    status(error.message, true);
  }
}

// Each list is ranked by its own score under its own heading: catalog records of a taxon
// and look-alikes (found by the model, not labelled so) are never mixed.
function show(sections, summary) {
  const shown = sections.filter((s) => s.results.length);
  $("results").innerHTML = shown.map((s) => `
    <section class="list" data-kind="${s.kind}"><h2>${esc(s.title)} <small>${esc(s.note || "")}</small></h2>
      <div class="results">${s.results.map(card).join("")}</div></section>`).join("");
  // One list says what it is in its heading; the line above it is for several at once.
  status(shown.length > 1 ? summary : shown.length ? "" : "No images found.");
}

function sectionsOf(body, q) {
  const records = body.results.filter((r) => r.match && r.match !== "look-alike");
  const alike = body.results.filter((r) => r.match === "look-alike");
  if (body.query_as === "taxon") {
    return [
      {kind: "catalog", title: `${records.length} records of ${q}`, note: `labelled ${body.rank} ${q} in the catalog`, results: records},
      {kind: "look-alike", title: `${alike.length} look-alikes`, note: "not labelled so; nearest to the name by the model", results: alike},
    ];
  }
  if (body.query_as === "common name") {
    return [
      {kind: "catalog", title: `${records.length} records of ${q}`, note: `called ${q} in the catalog`, results: records},
      {kind: "look-alike", title: `${alike.length} look-alikes`, note: "not called so; nearest to the name by the model", results: alike},
    ];
  }
  if (body.query_as === "name") {
    return [{kind: "look-alike", title: `${alike.length} look-alikes of ${q}`, note: "no image in the catalog is labelled so; nearest to the name by the model", results: alike}];
  }
  return [{kind: "text", title: `${body.results.length} images matching the text`, note: "nearest to the description by the model", results: body.results}];
}

// A server started with --token answers 401 until the page has it: asked for once, kept
// in a cookie (sent with every request, thumbnails included) for this site only.
async function getJSON(url, options) {
  let response = await fetch(url, options);
  if (response.status === 401) {
    const token = window.prompt("This collection needs its access token:");
    if (token) {
      document.cookie = "bioindex_token=" + encodeURIComponent(token) + "; path=/; SameSite=Strict";
      response = await fetch(url, options);
    }
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function search(push) {
  const q = $("q").value.trim();
  if (!q) { status("Type a taxon, a common name or a description."); return; }
  const state = new URLSearchParams();
  for (const f of FIELDS) if ($(f).value.trim()) state.set(f, $(f).value.trim());
  if ($("group").checked) state.set("group", "1");
  history[push ? "pushState" : "replaceState"](null, "", "?" + state.toString());
  status("Searching…");
  $("prediction").style.display = "none";
  try {
    const body = await getJSON("/api/search?" + params({q: q, k: 24}));
    const sections = sectionsOf(body, q);
    show(sections, sections.filter((s) => s.results.length).map((s) => s.title).join(" · "));
  } catch (error) {
    status(error.message, true);
  }
}

let collection = {names_taxa: true};

// Why an answer stopped above the asked rank; a note ("unlike every labelled genus") says
// it better where there is one.
const BANDS = {
  confident: "confident",
  uncertain: "uncertain: not sure enough of anything below this rank",
  unknown: "unknown: no rank is likely enough",
};

// Several files are photos of one specimen: one answer and one list of look-alikes for all.
async function upload(files) {
  files = Array.from(files || []).filter((f) => f);
  if (!files.length) return;
  const named = files.map((f) => f.name).join(" + ");
  status("Looking at " + named + "…");
  const form = () => {
    const f = new FormData();
    for (const one of files) f.append("file", one);
    return f;
  };
  await infoLoaded;
  try {
    const found = getJSON("/api/search/image?" + params({k: 24}), {method: "POST", body: form()});
    let panel;
    const checklist = $("checklist").files[0];
    // A catalog without names can still name a photo against a species list the curator
    // gives, or between the common names its records carry (a camera trap's "zebra").
    const commonNames = !collection.names_taxa && !checklist && collection.common_names >= 2;
    if (collection.names_taxa || checklist || commonNames) {
      const asked = {rank: "species", k: 3,
                     method: collection.names_taxa || commonNames ? $("method").value : "zero-shot"};
      if (collection.names_taxa && $("near").value.trim()) asked.near = $("near").value.trim();
      const body = form();
      if (checklist) body.append("species_list", checklist);
      const prediction = await getJSON("/api/classify?" + new URLSearchParams(asked), {method: "POST", body});
      const ranks = Object.entries(prediction.ranks).map(([rank, v]) =>
        `<tr><td>${rank}</td><td><i>${esc(v.name)}</i></td><td>${(v.score * 100).toFixed(1)}%</td></tr>`).join("");
      const answer = prediction.answer || {};
      const rank = answer.answer_rank ? ` (${esc(answer.answer_rank)})` : "";
      const views = files.length > 1 ? ` from ${files.length} photos` : "";
      // A taxon's name is italic; a common name or a label of one's own (no rank) is not.
      const kind = answer.answer_rank ? "" : ' class="common"';
      panel = `<b>Answer${views}: <i id="predicted"${kind}>${esc(answer.answer || "?")}</i>${rank}</b>
        <span id="band" class="band-${esc(answer.band || "")}">${esc(answer.answer_note ? answer.band : BANDS[answer.band] || "")}</span>
        ${answer.answer_note ? `<span id="note">${esc(answer.answer_note)}</span>` : ""}
        ${commonNames ? `<span id="note">one of the ${collection.common_names} common names the catalog's records carry (it names no taxa)</span>` : ""}
        <table>${ranks}</table>`;
    } else {
      panel = `<span id="no-names">This collection's catalog names no taxa, so the photo cannot be named from it.
        The images below look like it. Choose a species list (a checklist CSV) above to name it against,
        or index the collection with its metadata (<code>--metadata</code>).</span>`;
    }
    $("prediction").innerHTML = panel;
    $("prediction").style.display = "block";
    const results = (await found).results;
    show([{kind: "image", title: `${results.length} images that look like ${named}`, note: "nearest by the model", results}],
         `${results.length} images that look like ${named}`);
  } catch (error) {
    status(error.message, true);
  }
}

let timer;
$("q").addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    const prefix = $("q").value.trim();
    if (prefix.length < 2) return;
    const body = await getJSON("/api/taxa?" + new URLSearchParams({prefix, limit: 12})).catch(() => ({taxa: []}));
    $("taxa").innerHTML = body.taxa.map((t) => `<option value="${esc(t.name)}">${esc(t.rank)}</option>`).join("");
  }, 150);
});
$("search").addEventListener("submit", (event) => { event.preventDefault(); search(true); });
$("duplicates").addEventListener("click", () => duplicates(true));
$("photo").addEventListener("change", () => upload($("photo").files));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault(); drop.classList.remove("over");
  upload(event.dataTransfer.files);
});
window.addEventListener("popstate", () => load());
const infoLoaded = getJSON("/api/info").then((info) => {
  collection = info;
  $("summary").textContent = `${info.images_live} images · model ${info.model}` +
    (info.names_taxa ? "" : info.common_names
      ? " · common names only (no taxon names) in the catalog" : " · no taxon names in the catalog") +
    (info.files_missing ? ` · ${info.files_missing} of ${info.files_checked} photos checked are missing (moved or deleted since indexing: index the folder again)` : "");
  // Naming controls mean nothing where the catalog names no taxa (a species list still
  // names a photo against its own species); its common names can still be learnt from.
  $("near").parentElement.style.display = info.names_taxa ? "" : "none";
  $("method").parentElement.style.display = info.names_taxa || info.common_names >= 2 ? "" : "none";
  // Filters over what the catalog does not hold are left out (one given in the URL stays).
  const show = (id, holds) => {
    const given = $(id).type === "checkbox" ? $(id).checked : $(id).value;
    if (!holds && !given) $(id).closest("label").style.display = "none";
  };
  show("rankvalue", info.names_taxa);
  show("group", info.names_taxa);
  show("institution", (info.filled || {}).institution_code);
  show("country", (info.filled || {}).country_code);
}).catch(() => {});
function load() {
  const state = new URLSearchParams(location.search);
  for (const f of FIELDS) $(f).value = state.get(f) || "";
  $("group").checked = state.get("group") === "1";
  if (state.get("q")) search(false);
  else if (state.get("duplicates")) duplicates(false);
}
load();
