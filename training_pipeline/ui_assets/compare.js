// tp ui: the comparison page (16a_ui_pages): overlaid curves and the parallel coordinates, from the page's data.
const C = JSON.parse(document.getElementById('page-data').textContent);
C.panels.forEach((p, n) => Plotly.newPlot('overlay-' + n, p.traces, {
  title: {text: p.title, font: {size: 14}}, margin: {l: 55, r: 15, t: 36, b: 36}, xaxis: {title: {text: C.x}},
  yaxis: {type: p.log ? 'log' : 'linear', exponentformat: 'e'}, legend: {orientation: 'h', y: -0.25}, showlegend: true},
  {responsive: true, displaylogo: false}));
if (C.parcoords) Plotly.newPlot('parcoords', [C.parcoords], {margin: {l: 80, r: 80, t: 60, b: 30}},
                                {responsive: true, displaylogo: false});
else document.getElementById('parcoords').textContent = 'nothing to plot';
