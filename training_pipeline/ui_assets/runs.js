// tp ui: the runs table (16a_ui_pages). Compare the checked runs; hide or show the hyperparameter columns (remembered);
// keep the running rows live (status, duration, best, last) and announce new runs without inserting them.
const btn = document.getElementById('compare');
document.getElementById('runs').addEventListener('change', () => {
  btn.disabled = document.querySelectorAll('input.pick:checked').length < 2; });
btn.onclick = () => { const ids = [...document.querySelectorAll('input.pick:checked')].map(c => c.value);
  location.href = '/compare?runs=' + ids.map(encodeURIComponent).join(','); };

const hide = document.getElementById('hide-params'), table = document.getElementById('runs');
function showParams() { table.classList.toggle('no-params', hide.checked); }
try { hide.checked = localStorage.getItem('tp-ui-hide-params') === '1'; } catch (e) {}
hide.addEventListener('change', () => {
  try { localStorage.setItem('tp-ui-hide-params', hide.checked ? '1' : '0'); } catch (e) {}
  showParams(); });
showParams();

const num = v => v === null || v === undefined ? '-' : (Number.isInteger(v) ? String(v) : v.toPrecision(4));
const dur = s => { if (s === null || s === undefined) return '-'; s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), x = String(s % 60).padStart(2, '0');
  return h ? h + ':' + String(m).padStart(2, '0') + ':' + x : m + ':' + x; };
function update(tr, run) {
  const b = tr.querySelector('[data-c=status] .st'); b.textContent = run.status; b.className = 'st st-' + run.status;
  tr.querySelector('[data-c=duration]').textContent = dur(run.duration_s);
  for (const k of ['best', 'last']) {
    const cell = tr.querySelector('[data-c=' + k + ']');
    if (cell) cell.textContent = num(run[k]);
  }
}
const total0 = Number(document.getElementById('total').textContent);
async function live() {
  try {
    const r = await fetch('/api/runs?status=running&cols=-'); if (!r.ok) return;
    const j = await r.json(), running = new Map(j.runs.map(x => [x.experiment + '/' + x.run_id, x]));
    for (const tr of document.querySelectorAll('#runs tbody tr')) {
      const run = running.get(tr.dataset.run), shown = tr.querySelector('[data-c=status] .st').textContent;
      if (run) update(tr, run);
      else if (shown === 'running') {  // it ended: its final state
        const d = await fetch('/api/runs/' + tr.dataset.run); if (d.ok) update(tr, (await d.json()).run);
      }
    }
    if (j.total !== total0)
      document.getElementById('new').textContent = '· ' + (j.total - total0) + ' new since this page loaded: reload';
  } finally { setTimeout(live, 3000); }
}
setTimeout(live, 3000);
