// tp ui: the live run page (16a_ui_pages). Polls the rows after the last byte offset of metrics.jsonl and redraws the
// curves it has; polls the snapshot and the lower part of the page; stops once the run is over.
const RUN = JSON.parse(document.getElementById('page-data').textContent);
const SKIP = new Set(['step', 'epoch', 'time', 'samples', 'epoch_time_s', 'data_wait_s']);
const NOT_METRIC = new Set(['loss', 'lr', 'grad_norm', 'samples_per_s', 'data_wait_share']);
const TIME_KEY = /^time_(.+)_s$/;
const PHASE = {data: 'waiting for data', h2d: 'copy to device', forward: 'forward', backward: 'backward',
               optimizer: 'optimizer step'};
const CHARTS = [
  {id: 'chart-loss', title: 'loss', pick: (s, k) => k === 'loss'},
  {id: 'chart-metrics', title: 'metrics', pick: (s, k) => s !== 'test' && !NOT_METRIC.has(k) && !TIME_KEY.test(k)},
  {id: 'chart-lr', title: 'learning rate', pick: (s, k) => k === 'lr', log: true},
  {id: 'chart-throughput', title: 'throughput (samples/s)', pick: (s, k) => k === 'samples_per_s'},
  {id: 'chart-time', title: 'seconds per step, by phase', stack: true,
   pick: (s, k) => s === 'train' && TIME_KEY.test(k),
   name: (s, k) => { const p = k.match(TIME_KEY)[1]; return PHASE[p] || p.replace(/_/g, ' '); }},
];
const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
                 '#17becf'];  // plotly's own
const SPLIT_COLOR = {train: '#1f77b4', val: '#ff7f0e', test: '#2ca02c'};
const keyColor = {};
function color(c, s, k) {
  if (c.id === 'chart-metrics' || c.stack) {
    if (!(k in keyColor)) keyColor[k] = PALETTE[Object.keys(keyColor).length % PALETTE.length];
    return keyColor[k];
  }
  return SPLIT_COLOR[s] || '#555';
}
let offset = 0, inode = null, rev = 0, series = {}, running = true;
// The step-time keys of a train row are sums over the steps since the previous train row (over the epoch for the
// epoch's summary row, the one with epoch_time_s): divided by those steps, they are seconds per step.
let lastTrainStep = 0, lastEpochStep = 0;
function perStep(r) {
  const since = 'epoch_time_s' in r ? lastEpochStep : lastTrainStep;
  const steps = r.step - since;
  lastTrainStep = r.step; if ('epoch_time_s' in r) lastEpochStep = r.step;
  return steps > 0 ? steps : null;
}
function add(rows) {
  for (const r of rows) {
    if (!r.split || typeof r.step !== 'number') continue;
    const steps = r.split === 'train' ? perStep(r) : null;
    for (const [k, v] of Object.entries(r)) {
      if (typeof v !== 'number' || SKIP.has(k)) continue;
      const timing = r.split === 'train' && TIME_KEY.test(k);
      if (timing && steps === null) continue;
      const id = r.split + '|' + k, s = series[id] || (series[id] = {x: [], y: []});
      s.x.push(r.step); s.y.push(timing ? v / steps : v);
    }
  }
}
function draw() {
  rev += 1;
  for (const c of CHARTS) {
    const traces = [];
    for (const id of Object.keys(series).sort()) {
      const [s, k] = id.split('|'); if (!c.pick(s, k)) continue;
      const col = color(c, s, k);
      traces.push({type: 'scatter', mode: s === 'train' ? 'lines' : 'lines+markers',
                   name: c.name ? c.name(s, k) : s + ' ' + k, x: series[id].x, y: series[id].y,
                   stackgroup: c.stack ? 'one' : undefined, marker: {size: 6, color: col},
                   line: {color: col, dash: c.id === 'chart-metrics' && s === 'train' ? 'dot' : 'solid'}});
    }
    const ys = traces.flatMap(t => t.y).filter(v => v > 0);
    const log = c.log && ys.length && Math.max(...ys) / Math.min(...ys) > 10;  // a log axis only over decades
    const layout = {title: {text: c.title, font: {size: 14}}, margin: {l: 55, r: 15, t: 36, b: 36}, datarevision: rev,
                    uirevision: 'keep', yaxis: {type: log ? 'log' : 'linear', exponentformat: 'e'},
                    legend: {orientation: 'h', y: -0.12}, showlegend: true};
    if (ys.length && Math.max(...ys) === Math.min(...ys)) layout.yaxis.range = [0, 2 * ys[0]];  // a constant (an LR)
    const none = {text: 'not logged by this run', showarrow: false, xref: 'paper', yref: 'paper', x: 0.5, y: 0.5};
    if (!traces.length) layout.annotations = [none];
    Plotly.react(c.id, traces, layout, {responsive: true, displaylogo: false});
  }
}
async function pollMetrics() {  // a long file comes in chunks: ask again at once while the server says there is more
  let got = false;
  for (let more = true; more;) {
    const r = await fetch(RUN.api + '/metrics?offset=' + offset + (inode === null ? '' : '&inode=' + inode));
    if (!r.ok) return;
    const j = await r.json();
    if (j.reset) { series = {}; lastTrainStep = lastEpochStep = 0; }
    add(j.rows); offset = j.offset; inode = j.inode; more = j.more;
    got = got || j.rows.length > 0 || j.reset;
  }
  if (got || rev === 0) draw();
}
function text(id, v) { const e = document.getElementById(id); if (e) e.textContent = v; }
function dur(s) { if (s === null || s === undefined) return '-'; s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), x = String(s % 60).padStart(2, '0');
  return h ? h + ':' + String(m).padStart(2, '0') + ':' + x : m + ':' + x; }
const num = v => v === null || v === undefined ? '-' : v.toPrecision(4);
async function pollStatus() {
  const r = await fetch(RUN.api); if (!r.ok) return;
  const d = await r.json(), s = d.snapshot || {}, st = d.run.status;
  const b = document.getElementById('status'); b.textContent = st; b.className = 'st st-' + st;
  if (s.progress !== null && s.progress !== undefined) {
    document.getElementById('progress').value = s.progress; text('progress-text', (100 * s.progress).toFixed(1) + '%');
  }
  text('step', (s.step ?? '-') + ' / ' + (s.planned_steps ?? '?'));
  text('epoch', (s.epoch ?? '-') + ' / ' + (s.planned_epochs ?? '?'));
  text('eta', dur(s.eta_s)); text('throughput', s.samples_per_s ? Math.round(s.samples_per_s) + ' samples/s' : '-');
  text('best', num(d.run.best)); text('last', num(d.run.last));
  text('duration', dur(d.run.duration_s));
  running = st === 'running';
  await refreshDetails();
}
async function refreshDetails() {  // alerts, lineage, summary, config, events: the server's HTML, open ones kept open
  const r = await fetch(location.pathname + '?partial=details'); if (!r.ok) return;
  const box = document.getElementById('details');
  const open = new Set([...box.querySelectorAll('details[open]')].map(e => e.dataset.k));
  box.innerHTML = await r.text();
  box.querySelectorAll('details').forEach(e => { e.open = open.has(e.dataset.k); });
}
async function loop() {
  await pollMetrics(); await pollStatus();
  let n = 0;
  const tick = async () => {
    try { await pollMetrics(); if (++n % 2 === 0) await pollStatus(); } catch (e) { console.log(e); }
    if (running) setTimeout(tick, RUN.interval); else await pollMetrics();
  };
  if (running) setTimeout(tick, RUN.interval);
}
loop();
