// MathJax 3 settings for pymdownx.arithmatex (generic mode), read before tex-svg.js loads.
// tex-svg.js (MathJax 3.2.2 from the npm package "mathjax", es5/tex-svg.js, Apache-2.0,
// see LICENSE) is vendored so that maths renders offline: SVG output needs no font files.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
