// The attention matrix as an SVG heat map: one row per query token, one column per key token,
// token labels on both axes, shade = weight (darkest: the map's largest weight). Cells carry
// data-row, data-col and data-weight.

import { formatWeight, labelWidth, svg, weightColour } from "./dom.js";

const CELL = 22; // px per cell, also on phones: the box scrolls instead of shrinking the cells
const PAD = 8;

/** The longest label width of a token list, in px. */
function longestLabel(tokens) {
  return Math.max(0, ...tokens.map((token) => labelWidth(token)));
}

/** Column labels, written bottom-up above their column. */
function columnLabels(tokens, left, top) {
  return tokens.map((token, col) =>
    svg("text", {
      class: "col-label",
      "data-col": col,
      transform: `translate(${left + col * CELL + CELL / 2} ${top - PAD}) rotate(-90)`,
      "dominant-baseline": "central",
    }, [token]),
  );
}

/** Row labels, right-aligned left of their row. */
function rowLabels(tokens, left, top) {
  return tokens.map((token, row) =>
    svg("text", {
      class: "row-label",
      "data-row": row,
      x: left - PAD,
      y: top + row * CELL + CELL / 2,
      "text-anchor": "end",
      "dominant-baseline": "central",
    }, [token]),
  );
}

/** One rect per weight, shaded relative to `largest`, with a tooltip naming both tokens. */
function cells(matrix, rowTokens, colTokens, left, top, largest) {
  const group = svg("g", { class: "cells" });
  matrix.forEach((weights, row) => {
    weights.forEach((weight, col) => {
      const text = formatWeight(weight);
      const title = svg("title", {}, [`${rowTokens[row]} → ${colTokens[col]}: ${text}`]);
      group.append(svg("rect", {
        class: "cell",
        x: left + col * CELL,
        y: top + row * CELL,
        width: CELL - 1,
        height: CELL - 1,
        fill: weightColour(largest > 0 ? weight / largest : 0),
        "data-row": row,
        "data-col": col,
        "data-weight": text,
      }, [title]));
    });
  });
  return group;
}

/**
 * Draw `matrix` (rows = query tokens, columns = key tokens) into `box`, replacing what was
 * there. `label` describes the map for screen readers. Returns the largest weight (the darkest).
 */
export function drawHeatmap(box, matrix, rowTokens, colTokens, label) {
  const largest = Math.max(0, ...matrix.flat());
  const left = Math.ceil(longestLabel(rowTokens)) + 2 * PAD;
  const top = Math.ceil(longestLabel(colTokens)) + 2 * PAD;
  const width = left + colTokens.length * CELL + PAD;
  const height = top + rowTokens.length * CELL + PAD;
  const root = svg("svg", {
    class: "heatmap",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": label,
  });
  const marker = svg("rect", { class: "marker", visibility: "hidden" });
  root.append(
    ...columnLabels(colTokens, left, top),
    ...rowLabels(rowTokens, left, top),
    cells(matrix, rowTokens, colTokens, left, top, largest),
    marker,
  );
  root.dataset.left = left;
  root.dataset.top = top;
  box.replaceChildren(root);
  return largest;
}

/**
 * Outline one row (`{row}`) or one column (`{col}`) of the heat map in `box` and mark its label;
 * `{}` removes the outline.
 */
export function markHeatmap(box, { row = null, col = null } = {}) {
  const root = box.querySelector("svg.heatmap");
  if (!root) return;
  for (const label of root.querySelectorAll(".active")) label.classList.remove("active");
  const marker = root.querySelector(".marker");
  const rows = root.querySelectorAll(".row-label").length;
  const cols = root.querySelectorAll(".col-label").length;
  const left = Number(root.dataset.left);
  const top = Number(root.dataset.top);
  if (row !== null) {
    root.querySelector(`.row-label[data-row="${row}"]`)?.classList.add("active");
    placeMarker(marker, left - 1, top + row * CELL - 1, cols * CELL + 1, CELL + 1);
  } else if (col !== null) {
    root.querySelector(`.col-label[data-col="${col}"]`)?.classList.add("active");
    placeMarker(marker, left + col * CELL - 1, top - 1, CELL + 1, rows * CELL + 1);
  } else {
    marker.setAttribute("visibility", "hidden");
  }
}

/** Move the outline rect and show it. */
function placeMarker(marker, x, y, width, height) {
  for (const [name, value] of Object.entries({ x, y, width, height })) {
    marker.setAttribute(name, String(value));
  }
  marker.setAttribute("visibility", "visible");
}
