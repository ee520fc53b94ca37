// The attention view: map / layer / head selectors, the heat map, and two token strips whose
// chips highlight each other. #tgt-tokens holds the map's rows (queries), #src-tokens its
// columns (keys): target and source tokens for cross-attention, one side's tokens twice for
// the self-attention maps.

import { formatWeight, html, weightColour } from "./dom.js";
import { drawHeatmap, markHeatmap } from "./heatmap.js";

/** The maps an answer may hold, and which side's tokens are their rows and columns. */
const KINDS = [
  { name: "cross", label: "Cross-attention", queries: "tgt", keys: "src" },
  { name: "encoder", label: "Encoder self-attention", queries: "src", keys: "src" },
  { name: "decoder", label: "Decoder self-attention", queries: "tgt", keys: "tgt" },
];
const SIDE_NAMES = { src: "Source", tgt: "Target" };
const AVERAGE = "avg";
const HINT = "Hover or focus a token to see its attention; arrow keys move along a strip.";
const CHIP_DARKEST = 62; // chips keep dark text readable at the largest weight

/**
 * The selected map M[query][key]: maps[layer][head], or the plain arithmetic mean of the
 * received values over heads and/or layers when `layer` / `head` is AVERAGE (summed layer by
 * layer, head by head, then divided once).
 */
function selectMap(maps, layer, head) {
  const layers = layer === AVERAGE ? maps : [maps[layer]];
  const picked = layers.flatMap((heads) => (head === AVERAGE ? heads : [heads[head]]));
  return picked[0].map((weights, row) =>
    weights.map((_, col) => {
      let total = 0;
      for (const matrix of picked) total += matrix[row][col];
      return total / picked.length;
    }),
  );
}

/** The highlight rule: indexes whose weight is at least half the largest weight. */
function strongIndexes(weights) {
  const largest = Math.max(...weights);
  return weights.flatMap((weight, index) => (weight >= 0.5 * largest ? [index] : []));
}

/** Options 1..count (values as shown) and a last "average" option. */
function fillSelect(select, count, averageLabel) {
  const options = Array.from({ length: count }, (_, index) =>
    html("option", { value: index + 1 }, [String(index + 1)]),
  );
  select.replaceChildren(...options, html("option", { value: AVERAGE }, [averageLabel]));
}

/** One focusable chip per token; data-index is the position in the token list. */
function fillStrip(strip, tokens, sideName) {
  const chips = tokens.map((token, index) =>
    html("span", {
      class: "token",
      tabindex: 0,
      role: "listitem",
      "data-index": index,
      "aria-label": `${sideName} token ${index + 1} of ${tokens.length}: ${token}`,
    }, [token]),
  );
  strip.replaceChildren(...chips);
}

/** Arrow keys (and Home / End) move the focus along a strip of chips. */
function moveFocus(strip, event) {
  const chips = [...strip.querySelectorAll(".token")];
  const current = chips.indexOf(event.target);
  if (current < 0) return;
  const steps = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: chips.length - 1 };
  if (!(event.key in steps)) return;
  event.preventDefault();
  chips[Math.min(chips.length - 1, Math.max(0, steps[event.key]))].focus();
}

/** A selector's value as a 0-based index, or AVERAGE. */
function selectedIndex(select) {
  return select.value === AVERAGE ? AVERAGE : Number(select.value) - 1;
}

/** "layer 2" or "average of layers": a selector's choice in words. */
function selectionName(select, noun) {
  if (select.value !== AVERAGE) return `${noun} ${select.value}`;
  return select.selectedOptions[0].textContent.toLowerCase();
}

export class AttentionView {
  /**
   * `el`: {section, kind, layer, head, matrix, caption, keyStrip, queryStrip, keyTitle,
   * queryTitle, info}: the elements of index.html's attention section.
   */
  constructor(el) {
    this.el = el;
    this.attention = null; // the answer's attention record
    this.kind = KINDS[0];
    this.matrix = null; // the selected map after averaging, M[query][key]
    this.queries = []; // row tokens
    this.keys = []; // column tokens
    this.bindControls();
    this.bindStrip(el.queryStrip, (row) => this.highlightFromQuery(row));
    this.bindStrip(el.keyStrip, (col) => this.highlightFromKey(col));
  }

  /** Show one translation's attention record; null hides the view. */
  show(attention) {
    this.attention = attention;
    this.el.section.hidden = !attention;
    if (!attention) return;
    const present = KINDS.filter((kind) => Array.isArray(attention[kind.name]));
    const options = present.map((kind) => html("option", { value: kind.name }, [kind.label]));
    this.el.kind.replaceChildren(...options);
    this.el.kind.value = present[0].name;
    this.fillLayersAndHeads(true);
    this.redraw();
  }

  /** Selector events: a new map kind may have another number of layers. */
  bindControls() {
    this.el.kind.addEventListener("change", () => {
      this.fillLayersAndHeads(false);
      this.redraw();
    });
    this.el.layer.addEventListener("change", () => this.redraw());
    this.el.head.addEventListener("change", () => this.redraw());
    this.el.matrix.addEventListener("mouseover", (event) => {
      const cell = event.target.closest("rect.cell");
      if (cell) this.highlightFromQuery(Number(cell.dataset.row));
    });
    this.el.matrix.addEventListener("mouseleave", () => this.clearHighlight());
  }

  /** Hover or focus on a chip highlights through `highlight(index)`; leaving clears. */
  bindStrip(strip, highlight) {
    const enter = (event) => {
      const chip = event.target.closest(".token");
      if (chip) highlight(Number(chip.dataset.index));
    };
    const leave = (event) => {
      if (event.target.closest(".token")) this.clearHighlight();
    };
    strip.addEventListener("mouseover", enter);
    strip.addEventListener("focusin", enter);
    strip.addEventListener("mouseout", leave);
    strip.addEventListener("focusout", leave);
    strip.addEventListener("keydown", (event) => moveFocus(strip, event));
  }

  /** Layer and head options of the selected kind; defaults: last layer, average of heads. */
  fillLayersAndHeads(reset) {
    const maps = this.attention[this.el.kind.value];
    const previous = { layer: this.el.layer.value, head: this.el.head.value };
    fillSelect(this.el.layer, maps.length, "Average of layers");
    fillSelect(this.el.head, maps[0].length, "Average of heads");
    const keeps = (select, value) => !reset && [...select.options].some((o) => o.value === value);
    this.el.layer.value = keeps(this.el.layer, previous.layer) ? previous.layer : maps.length;
    this.el.head.value = keeps(this.el.head, previous.head) ? previous.head : AVERAGE;
  }

  /** Recompute the selected map and redraw the strips and the heat map. */
  redraw() {
    this.kind = KINDS.find((kind) => kind.name === this.el.kind.value);
    const maps = this.attention[this.kind.name];
    this.matrix = selectMap(maps, selectedIndex(this.el.layer), selectedIndex(this.el.head));
    this.queries = this.attention[`${this.kind.queries}_tokens`];
    this.keys = this.attention[`${this.kind.keys}_tokens`];
    const querySide = SIDE_NAMES[this.kind.queries];
    const keySide = SIDE_NAMES[this.kind.keys];
    this.el.queryTitle.textContent = `${querySide} tokens: attending (rows)`;
    this.el.keyTitle.textContent = `${keySide} tokens: attended to (columns)`;
    fillStrip(this.el.queryStrip, this.queries, querySide);
    fillStrip(this.el.keyStrip, this.keys, keySide);
    const layer = selectionName(this.el.layer, "layer");
    const what = `${this.kind.label}, ${layer}, ${selectionName(this.el.head, "head")}`;
    const rows = `${this.queries.length} ${querySide.toLowerCase()} rows`;
    const size = `${rows} × ${this.keys.length} ${keySide.toLowerCase()} columns`;
    const box = this.el.matrix;
    const largest = drawHeatmap(box, this.matrix, this.queries, this.keys, `${what}: ${size}`);
    const scale = `darker = more weight, darkest = ${formatWeight(largest)} (the largest)`;
    this.el.caption.textContent = `${what}: ${size}; ${scale}.`;
    this.clearHighlight();
  }

  /** A query (row) token: highlight the key tokens it attends to. */
  highlightFromQuery(row) {
    const weights = this.matrix[row];
    this.highlight(this.el.queryStrip, row, this.el.keyStrip, weights, this.keys);
    markHeatmap(this.el.matrix, { row });
  }

  /** A key (column) token: highlight the query tokens attending to it. */
  highlightFromKey(col) {
    const weights = this.matrix.map((row) => row[col]);
    this.highlight(this.el.keyStrip, col, this.el.queryStrip, weights, this.queries);
    markHeatmap(this.el.matrix, { col });
  }

  /** Mark chip `index` of `strip` active; weigh and highlight every chip of `other`. */
  highlight(strip, index, other, weights, otherTokens) {
    this.clearHighlight();
    const strong = new Set(strongIndexes(weights));
    const largest = Math.max(...weights);
    const active = strip.querySelector(`.token[data-index="${index}"]`);
    active?.classList.add("active");
    for (const chip of other.querySelectorAll(".token")) {
      const weight = weights[Number(chip.dataset.index)];
      chip.dataset.weight = formatWeight(weight);
      chip.style.backgroundColor = weightColour(largest > 0 ? weight / largest : 0, CHIP_DARKEST);
      chip.classList.toggle("highlighted", strong.has(Number(chip.dataset.index)));
    }
    const ranked = [...strong].sort((a, b) => weights[b] - weights[a]);
    const listed = ranked.map((i) => `${otherTokens[i]} ${formatWeight(weights[i])}`);
    const token = active?.textContent ?? "";
    const verb = strip === this.el.queryStrip ? "attends most to" : "is attended most by";
    this.el.info.textContent = `${token} ${verb}: ${listed.join(", ")}`;
  }

  /** Remove every highlight, weight and outline. */
  clearHighlight() {
    for (const chip of this.el.section.querySelectorAll(".token")) {
      chip.classList.remove("highlighted", "active");
      delete chip.dataset.weight;
      chip.style.removeProperty("background-color");
    }
    markHeatmap(this.el.matrix, {});
    this.el.info.textContent = HINT;
  }
}
