// The word alignment as an SVG: source words on top, translation words below, one line per
// Pharaoh link "i-j" (source word i, target word j). Hovering or focusing a word highlights its
// lines and the words at their other ends.

import { html, labelWidth, svg } from "./dom.js";

const FONT = 14; // px, monospace (see explorer.css)
const GAP = 18; // px between words
const PAD = 10;
const SRC_Y = 22; // baselines of the two rows
const TGT_Y = 118;
const HEIGHT = 136;

/** Words as the contract splits sentences (Python's str.split()). */
function words(text) {
  return text.split(/\s+/).filter(Boolean);
}

/** "0-0 1-2" -> [[0, 0], [1, 2]], keeping only links between existing words. */
function parseLinks(alignment, srcCount, tgtCount) {
  return words(alignment)
    .map((link) => link.split("-").map(Number))
    .filter(([i, j]) => i >= 0 && i < srcCount && j >= 0 && j < tgtCount);
}

/** Centre x of each word of a row laid out left to right from `start`. */
function centres(list, start) {
  let x = start;
  return list.map((word) => {
    const width = labelWidth(word, FONT);
    const centre = x + width / 2;
    x += width + GAP;
    return centre;
  });
}

/** Total width of a row of words. */
function rowWidth(list) {
  return list.reduce((sum, word) => sum + labelWidth(word, FONT), 0) + GAP * (list.length - 1);
}

/** One focusable word of a row, greyed when no link reaches it. */
function wordNode(word, index, side, x, y, linked) {
  const sideName = side === "src" ? "Source" : "Target";
  return svg("text", {
    class: linked ? "word" : "word unaligned",
    tabindex: 0,
    x,
    y,
    "text-anchor": "middle",
    "data-side": side,
    "data-index": index,
    "aria-label": `${sideName} word ${index + 1}: ${word}${linked ? "" : " (unaligned)"}`,
  }, [word]);
}

/** Highlight the lines of word `index` on `side` and the words they reach (null clears). */
function markWord(root, side, index) {
  for (const node of root.querySelectorAll(".highlighted")) node.classList.remove("highlighted");
  if (index === null) return;
  const other = side === "src" ? "tgt" : "src";
  const word = (wordSide, wordIndex) =>
    root.querySelector(`.word[data-side="${wordSide}"][data-index="${wordIndex}"]`);
  for (const line of root.querySelectorAll(`line[data-${side}="${index}"]`)) {
    line.classList.add("highlighted");
    word(other, line.dataset[other])?.classList.add("highlighted");
  }
  word(side, index)?.classList.add("highlighted");
}

/** Hover and focus on words highlight their links. */
function bindWords(root) {
  const enter = (event) => {
    const word = event.target.closest(".word");
    if (word) markWord(root, word.dataset.side, word.dataset.index);
  };
  const leave = () => markWord(root, null, null);
  root.addEventListener("mouseover", enter);
  root.addEventListener("focusin", enter);
  root.addEventListener("mouseout", leave);
  root.addEventListener("focusout", leave);
}

/** Draw the alignment of `srcText` and `tgtText` into `box`, replacing what was there. */
export function drawAlignment(box, srcText, tgtText, alignment) {
  const src = words(srcText);
  const tgt = words(tgtText);
  const links = parseLinks(alignment, src.length, tgt.length);
  const width = Math.ceil(Math.max(rowWidth(src), rowWidth(tgt))) + 2 * PAD;
  const srcX = centres(src, (width - rowWidth(src)) / 2);
  const tgtX = centres(tgt, (width - rowWidth(tgt)) / 2);
  const root = svg("svg", {
    class: "alignment",
    width,
    height: HEIGHT,
    viewBox: `0 0 ${width} ${HEIGHT}`,
    role: "group",
    "aria-label": `Word alignment: ${links.length} links`,
  });
  const lines = links.map(([i, j]) =>
    svg("line", {
      class: "link",
      x1: srcX[i],
      y1: SRC_Y + 8,
      x2: tgtX[j],
      y2: TGT_Y - FONT,
      "data-src": i,
      "data-tgt": j,
    }),
  );
  const srcLinked = new Set(links.map(([i]) => i));
  const tgtLinked = new Set(links.map(([, j]) => j));
  root.append(
    ...lines,
    ...src.map((word, i) => wordNode(word, i, "src", srcX[i], SRC_Y, srcLinked.has(i))),
    ...tgt.map((word, j) => wordNode(word, j, "tgt", tgtX[j], TGT_Y, tgtLinked.has(j))),
  );
  bindWords(root);
  const summary = html("p", { class: "hint" }, [`Pharaoh links: ${alignment || "(none)"}`]);
  box.replaceChildren(root, summary);
}
