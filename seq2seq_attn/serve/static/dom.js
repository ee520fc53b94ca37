// Small DOM helpers shared by the explorer's modules: element builders and the weight colours.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Set attributes (skipping null/undefined) and append children (strings become text). */
function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  node.append(...children);
  return node;
}

/** An HTML element: html("li", {class: "x"}, ["text", otherNode]). */
export function html(tag, attrs = {}, children = []) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, same call shape as html(). */
export function svg(tag, attrs = {}, children = []) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A weight formatted as the page shows and stores it (data-weight): 4 decimals. */
export function formatWeight(weight) {
  return weight.toFixed(4);
}

/**
 * Background colour for a weight in [0, 1]: white at 0, blue at 1. `darkest` is the lightness
 * (percent) reached at weight 1: the heat map goes dark, chips stay light enough for dark text.
 */
export function weightColour(weight, darkest = 30) {
  const clamped = Math.min(1, Math.max(0, weight));
  const lightness = 100 - (100 - darkest) * clamped;
  return `hsl(214 80% ${lightness.toFixed(1)}%)`;
}

/** Width in pixels of a label in the SVGs' monospace font (0.6 em a character). */
export function labelWidth(text, fontSize = 12) {
  return Array.from(text).length * fontSize * 0.6;
}
