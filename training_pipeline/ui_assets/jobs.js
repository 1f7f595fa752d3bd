// tp ui: the jobs page (16a_ui_pages): the queue's table, refreshed every 2 s without a reload
setInterval(async () => {
  const r = await fetch('/jobs?partial=1');
  if (r.ok) document.getElementById('jobs').innerHTML = await r.text();
}, 2000);
