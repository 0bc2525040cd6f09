// qvm-remote admin panel. Vanilla JS, no framework, no CDN. The page never builds HTML
// from data: every value goes into the DOM through textContent or a property, so output
// of commands and names of VMs cannot become markup. State changes are POSTs with a
// JSON body and the session's CSRF token (shared/DESIGN.md §8).
'use strict';

(function () {
  // ---- Error hook: the browser test reads window.__panelErrors. -------------------
  const pageErrors = [];
  window.__panelErrors = pageErrors;
  window.addEventListener('error', (e) => pageErrors.push(String(e.message || e)));
  document.addEventListener('securitypolicyviolation', (e) => pageErrors.push('CSP violation: ' + e.violatedDirective + ' ' + (e.blockedURI || '')));
  window.addEventListener('unhandledrejection', (e) => {
    const r = e.reason;
    if (r && r.name === 'Cancelled') { e.preventDefault(); return; }
    pageErrors.push('unhandled rejection: ' + String((r && r.message) || r));
  });

  let csrf = null;

  // ---- DOM helpers -----------------------------------------------------------------
  function h(tag, attrs, kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (['value', 'checked', 'disabled', 'hidden', 'selected', 'open'].includes(k)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of [].concat(kids === undefined ? [] : kids)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);
  const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z' : 'never');
  const fmtBytes = (n) => {
    if (n < 1024) return n + ' B';
    const u = ['KiB', 'MiB', 'GiB', 'TiB'];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
    return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
  };
  const pill = (text, kind) => h('span', { class: 'pill ' + (kind || ''), text });
  const yesNo = (b, yes, no) => pill(b ? yes : no, b ? 'ok' : 'bad');
  const card = (title, kids, cls) => h('section', { class: 'card ' + (cls || '') }, [title ? h('h3', { text: title }) : null].concat(kids));
  const table = (heads, rows) => h('div', { class: 'table-wrap' }, h('table', {}, [
    h('thead', {}, h('tr', {}, heads.map((x) => h('th', { text: x, scope: 'col' })))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: heads.length, class: 'muted', text: 'nothing here' }))),
  ]));
  const td = (x, cls) => h('td', { class: cls }, x instanceof Node ? x : (x === undefined || x === null ? '' : String(x)));
  const labelDot = (label) => h('span', { class: 'label-dot l-' + (/^[a-z]+$/.test(label || '') ? label : 'gray'), title: label || '' });
  function field(label, input) { return h('label', {}, [label, input]); }
  function select(options, value) {
    return h('select', {}, options.map((o) => {
      const [v, t] = Array.isArray(o) ? o : [o, o];
      return h('option', { value: v, text: t, selected: v === value });
    }));
  }

  function toast(text, bad) {
    const box = $('toasts');
    while (box.children.length >= 3) box.firstChild.remove();
    const t = h('div', { class: 'toast' + (bad ? ' bad' : ''), text });
    box.append(t);
    setTimeout(() => t.remove(), bad ? 7000 : 3500);
  }

  // ---- API ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || ('HTTP ' + status));
      this.name = 'ApiError';
      this.status = status;
      this.body = body || {};
    }
  }
  class Cancelled extends Error { constructor() { super('cancelled'); this.name = 'Cancelled'; } }

  async function api(method, path, body) {
    const opts = { method, credentials: 'same-origin', headers: {} };
    if (method === 'POST') {
      opts.headers['Content-Type'] = 'application/json';
      opts.headers['X-CSRF-Token'] = csrf || '';
      opts.body = JSON.stringify(body || {});
    }
    const r = await fetch(path, opts);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
    if (r.status === 401) { loggedOut(); throw new ApiError(401, data); }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }
  const get = (path, params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const qs = q.toString();
    return api('GET', path + (qs ? '?' + qs : ''));
  };
  // A POST that may need the user's confirmation (409 needs_confirmation): asks, then
  // sends again with `confirmKey: true`.
  async function post(path, body, confirmKey) {
    try {
      return await api('POST', path, body);
    } catch (e) {
      if (e instanceof ApiError && e.status === 409 && e.body.needs_confirmation) {
        if (await confirmDialog(e.body.error)) {
          return api('POST', path, Object.assign({}, body, { [confirmKey || 'confirm']: true }));
        }
        throw new Cancelled();
      }
      throw e;
    }
  }
  function errText(e) {
    if (!(e instanceof ApiError)) return String(e.message || e);
    let t = e.message;
    if (e.body.stderr) t += ' — ' + e.body.stderr.trim().split('\n').slice(-3).join(' / ');
    return t;
  }
  // Runs an action from a button: disables it, reports success or failure.
  async function act(button, fn, okText) {
    if (button) button.disabled = true;
    try {
      const r = await fn();
      if (okText) toast(typeof okText === 'function' ? okText(r) : okText);
      return r;
    } catch (e) {
      if (!(e instanceof Cancelled)) toast(errText(e), true);
      return null;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function confirmDialog(text, detail) {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    const pre = $('confirm-detail');
    pre.hidden = !detail;
    pre.textContent = detail || '';
    return new Promise((resolve) => {
      d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
      d.returnValue = '';
      d.showModal();
      $('confirm-ok').focus();
    });
  }

  // ---- Tasks: output by server-sent events, polling as a fallback -----------------
  const watchers = new Map();
  function watchTask(id) {
    if (watchers.has(id)) return watchers.get(id);
    const w = { id, chunks: [], state: { status: 'running', progress: null }, last: 0, listeners: new Set(), done: false, es: null };
    const notify = () => w.listeners.forEach((f) => f(w));
    const add = (c) => { if (c.seq > w.last) { w.chunks.push(c); w.last = c.seq; } };
    const poll = async () => {
      while (!w.done) {
        try {
          const t = await get('/api/tasks/' + id, { since: w.last });
          (t.output || []).forEach(add);
          w.state = t;
          if (t.status !== 'running') w.done = true;
          notify();
        } catch (e) { if (e.status === 404) { w.done = true; notify(); } }
        if (!w.done) await new Promise((r) => setTimeout(r, 1000));
      }
    };
    try {
      const es = new EventSource('/api/tasks/' + id + '/events');
      w.es = es;
      es.addEventListener('output', (ev) => { add(JSON.parse(ev.data)); notify(); });
      es.addEventListener('state', (ev) => { w.state = JSON.parse(ev.data); notify(); });
      es.addEventListener('end', (ev) => { w.state = JSON.parse(ev.data); w.done = true; es.close(); notify(); });
      // EventSource reconnects by itself after the server ends a long stream; if it
      // gives up (readyState CLOSED), polling takes over.
      es.addEventListener('error', () => { if (es.readyState === EventSource.CLOSED && !w.done) poll(); });
    } catch (_) { poll(); }
    watchers.set(id, w);
    return w;
  }
  // A task box: title, progress bar, status, cancel button and live output.
  function taskBox(id, title) {
    const out = h('pre', { class: 'out', 'aria-label': 'output' });
    const prog = h('progress', { max: 100 });
    const status = h('span', { class: 'pill', text: 'running' });
    const cancel = h('button', { type: 'button', class: 'small', text: 'Cancel',
      onclick: () => act(cancel, () => api('POST', '/api/tasks/' + id + '/cancel', {}), 'cancel sent') });
    const box = h('div', { class: 'task', 'data-task': id }, [
      h('div', { class: 'row' }, [h('strong', { text: title }), status, cancel]), prog, out]);
    const w = watchTask(id);
    const render = () => {
      if (!box.isConnected && w.done) { w.listeners.delete(render); return; }
      out.replaceChildren(...w.chunks.map((c) => h('span', { class: c.stream === 'stderr' ? 'err' : '', text: c.text })));
      out.scrollTop = out.scrollHeight;
      const s = w.state.status || 'running';
      status.textContent = s + (w.state.exit !== null && w.state.exit !== undefined ? ' (exit ' + w.state.exit + ')' : '');
      status.className = 'pill ' + (s === 'done' ? 'ok' : s === 'running' ? 'warn' : 'bad');
      if (typeof w.state.progress === 'number') prog.value = w.state.progress; else prog.removeAttribute('value');
      if (s !== 'running') { prog.value = typeof w.state.progress === 'number' ? w.state.progress : 100; cancel.hidden = true; }
      box.dataset.status = s;
    };
    w.listeners.add(render);
    render();
    return box;
  }
  // Closing the page cancels the commands it started (the server also kills a command
  // nobody watches); fetch with keepalive outlives the page.
  window.addEventListener('pagehide', () => {
    for (const w of watchers.values()) {
      if (!w.done && w.exec) {
        fetch('/api/tasks/' + w.id + '/cancel', { method: 'POST', keepalive: true, credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf || '' }, body: '{}' });
      }
    }
  });

  // ---- Staged changes (Global Config, VM Tools) --------------------------------------
  const staged = [];
  function stage(item) {
    const same = staged.findIndex((s) => s.key === item.key);
    if (same >= 0) staged.splice(same, 1);
    if (item.old === item.neu && !item.always) { renderStaged(); return; }
    staged.push(item);
    renderStaged();
    if (same < 0) toast('staged: ' + item.label);
  }
  function renderStaged() {
    const box = $('staged');
    box.hidden = staged.length === 0;
    $('staged-count').textContent = String(staged.length);
    $('staged-list').replaceChildren(...staged.map((s, i) => h('li', { 'data-staged': s.key }, [
      h('div', { class: 'row' }, [h('strong', { text: s.label }),
        h('button', { type: 'button', class: 'small ghost', text: 'drop', onclick: () => { staged.splice(i, 1); renderStaged(); } })]),
      h('div', { class: 'diff' }, [h('div', { class: 'del', text: '- ' + (s.old === '' ? '(unset)' : s.old) }),
        h('div', { class: 'add', text: '+ ' + (s.neu === '' ? '(unset)' : s.neu) })]),
      s.error ? h('div', { class: 'result pill bad', text: s.error }) : null,
    ])));
  }
  async function applyStaged() {
    const btn = $('staged-apply');
    btn.disabled = true;
    let ok = 0;
    for (const s of [...staged]) {
      try {
        await api('POST', s.path, s.body);
        staged.splice(staged.indexOf(s), 1);
        ok++;
      } catch (e) {
        s.error = errText(e);
      }
      renderStaged();
    }
    btn.disabled = false;
    toast(ok + ' applied' + (staged.length ? ', ' + staged.length + ' failed and stay staged' : ''), staged.length > 0);
    route();
  }

  // ---- Tabs ----------------------------------------------------------------------------
  const tabBound = new Set(); // event sources to close when leaving a tab
  const timers = new Set();
  function every(ms, fn) { const t = setInterval(fn, ms); timers.add(t); return t; }

  async function vmNames(filter) {
    const r = await get('/api/vms');
    return r.vms.filter((v) => v.name !== 'dom0' && (!filter || filter(v))).map((v) => v.name);
  }

  // 1. Dashboard
  async function dashboard(view) {
    const d = await get('/api/dashboard');
    const unitBtn = (action, text, cls) => {
      const b = h('button', { type: 'button', class: cls || '', text, 'data-action': action });
      b.addEventListener('click', () => act(b, async () => {
        if (action === 'enable' && !(await confirmDialog(d.enable_risk))) throw new Cancelled();
        return api('POST', '/api/daemon', { action, confirm: action === 'enable' });
      }, 'systemctl ' + action + ': ok').then(() => route()));
      return b;
    };
    const daemon = d.daemon;
    view.append(h('h2', { text: 'Dashboard' }), h('div', { class: 'grid' }, [
      card('Daemon', [
        h('p', {}, [yesNo(daemon.running, 'running', 'not running'), ' ',
          daemon.running ? h('span', { class: 'muted', text: 'pid ' + daemon.pid + ', ' + daemon.mode + ' mode' }) : null]),
        h('dl', { class: 'kv' }, [
          h('dt', { text: 'unit' }), h('dd', { text: d.unit.name }),
          h('dt', { text: 'active' }), h('dd', {}, pill(d.unit.active, d.unit.active === 'active' ? 'ok' : 'warn')),
          h('dt', { text: 'enabled at boot' }), h('dd', {}, pill(d.unit.enabled, d.unit.enabled === 'enabled' ? 'warn' : '')),
          h('dt', { text: 'status updated' }), h('dd', { text: fmtTime(daemon.updated_ms) }),
        ]),
        h('div', { class: 'row' }, [unitBtn('start', 'Start'), unitBtn('stop', 'Stop'), unitBtn('restart', 'Restart'),
          unitBtn('enable', 'Enable at boot…', 'danger'), unitBtn('disable', 'Disable')]),
      ]),
      card('Approvals', [h('p', { class: 'big', text: String(d.approvals_pending) }),
        h('p', {}, [d.approvals_pending ? 'jobs wait for a decision — ' : 'no job waits — ', h('a', { href: '#/remote', text: 'open qvm-remote' })])]),
      card('Audit log', [h('p', {}, d.audit.ok === true ? pill('chain intact', 'ok') : d.audit.ok === false ? pill('chain broken', 'bad') : pill('not checked', 'warn')),
        h('p', { class: 'muted', text: d.audit.detail })]),
      card('Configuration', [h('dl', { class: 'kv' }, [
        h('dt', { text: 'config' }), h('dd', {}, h('code', { text: d.config })),
        h('dt', { text: 'policy' }), h('dd', {}, [h('code', { text: d.policy }), ' ', d.policy_exists ? '' : pill('absent: every VM is full', 'warn')]),
        h('dt', { text: 'tasks running' }), h('dd', { text: String(d.tasks_running) }),
        h('dt', { text: 'panel sessions' }), h('dd', { text: String(d.sessions) }),
      ])]),
      card('Virtual machines served', [vmTable(d.vms)], 'wide'),
    ]));
  }
  function vmTable(vms) {
    return table(['VM', 'key', 'served', 'connected', 'sessions', 'done', 'refused', 'queued', 'running', 'unacked', 'last session'],
      vms.map((v) => h('tr', {}, [td(h('strong', { text: v.name })),
        td(v.has_key ? h('code', { text: v.fingerprint }) : pill('no key', 'bad')),
        td(yesNo(v.served, 'yes', 'no')), td(yesNo(v.connected, 'yes', 'no')),
        td(v.sessions, 'num'), td(v.done, 'num'), td(v.refused, 'num'), td(v.queued, 'num'), td(v.running, 'num'), td(v.unacked, 'num'),
        td(fmtTime(v.last_session_ms))])));
  }

  // 2. Logs
  async function logs(view, params) {
    const vm = h('input', { type: 'text', value: params.get('vm') || '', placeholder: 'any', size: 12 });
    const cat = select(['', 'EXEC', 'DONE', 'DONE-FAIL', 'REJECT', 'DENY', 'ASK', 'AUTH-FAIL', 'PROTO', 'PANEL', 'PANEL-LOGIN', 'PANEL-DENIED', 'PANEL-TASK'].map((c) => [c, c || 'any']), params.get('category') || '');
    const text = h('input', { type: 'search', value: params.get('text') || '', placeholder: 'contains…', size: 20 });
    const live = h('input', { type: 'checkbox' });
    const body = h('tbody');
    const info = h('p', { class: 'muted' });
    const rowOf = (l) => h('tr', {}, [td(h('code', { text: l.time })), td(pill(l.category, /FAIL|REJECT|DENY|PROTO/.test(l.category) ? 'bad' : '')), td(l.vm),
      td(h('code', { text: Object.entries(l.fields).filter(([k]) => k !== 'vm').map(([k, v]) => k + '=' + v).join('  ') }))]);
    const matches = (l) => (!vm.value || l.vm === vm.value) && (!cat.value || l.category === cat.value) && (!text.value || l.line.toLowerCase().includes(text.value.toLowerCase()));
    let es = null;
    const load = async () => {
      const r = await get('/api/logs', { vm: vm.value, category: cat.value, text: text.value, limit: 300 });
      body.replaceChildren(...r.lines.map(rowOf));
      info.textContent = r.matched + ' matching lines in ' + r.path + ' (' + fmtBytes(r.size) + '), last 300 shown';
      return r.size;
    };
    const size = await load();
    const setLive = () => {
      if (es) { es.close(); tabBound.delete(es); es = null; }
      if (!live.checked) return;
      es = new EventSource('/api/logs/events?from=' + size);
      tabBound.add(es);
      es.addEventListener('line', (ev) => { const l = JSON.parse(ev.data); if (matches(l)) body.append(rowOf(l)); });
    };
    live.addEventListener('change', setLive);
    const filter = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); load(); } }, [field('VM', vm), field('category', cat), field('text', text),
      h('button', { type: 'submit', class: 'primary', text: 'Filter' }), h('label', { class: 'inline' }, [live, 'live tail'])]);
    const unit = select([['daemon', 'qvm-remote-dom0'], ['panel', 'qvm-remote-panel']], 'daemon');
    const jout = h('pre', { class: 'out', text: '(choose a unit and press Show)' });
    const jbtn = h('button', { type: 'button', text: 'Show journal' });
    jbtn.addEventListener('click', () => act(jbtn, async () => { const r = await get('/api/journal', { unit: unit.value, lines: 200 }); jout.textContent = r.text || r.stderr || '(empty)'; }));
    view.append(h('h2', { text: 'Logs' }), card('Audit log', [filter, info, h('div', { class: 'table-wrap' }, h('table', {}, [
      h('thead', {}, h('tr', {}, ['time', 'category', 'VM', 'fields'].map((x) => h('th', { text: x })))), body]))]),
    card('systemd journal', [h('div', { class: 'row' }, [field('unit', unit), jbtn]), jout]));
  }

  // 3. Virtual machines
  async function vms(view) {
    const r = await get('/api/vms');
    const actions = (v) => {
      if (v.name === 'dom0') return '';
      const btns = [];
      const power = (a, t) => {
        const b = h('button', { type: 'button', class: 'small', text: t, 'data-action': a + ':' + v.name });
        b.addEventListener('click', () => act(b, () => api('POST', '/api/vms/power', { vm: v.name, action: a }), v.name + ': ' + a + ' done').then(() => route()));
        btns.push(b);
      };
      if (v.state === 'Halted') power('start', 'Start');
      if (v.state === 'Running') { power('shutdown', 'Shut down'); power('pause', 'Pause'); }
      if (v.state === 'Paused') power('unpause', 'Unpause');
      if (v.state !== 'Halted') power('kill', 'Kill');
      const chk = h('button', { type: 'button', class: 'small', text: 'Check' });
      chk.addEventListener('click', () => act(chk, () => get('/api/vms/check', { vm: v.name }), (c) => v.name + ': ' + (c.exists ? 'exists' : 'does not exist') + ', ' + (c.running ? 'running' : 'not running')));
      btns.push(chk);
      if (v.has_key) {
        const rv = h('button', { type: 'button', class: 'small danger', text: 'Revoke' });
        rv.addEventListener('click', () => act(rv, async () => {
          if (!(await confirmDialog('Revoke ' + v.name + '? Its key is deleted and the daemon stops serving it.'))) throw new Cancelled();
          return api('POST', '/api/vms/revoke', { vm: v.name });
        }, 'revoked ' + v.name).then(() => route()));
        btns.push(rv);
      }
      return h('div', { class: 'row' }, btns);
    };
    const names = r.vms.filter((v) => v.name !== 'dom0').map((v) => v.name);
    const avm = select(names, names[0]);
    const key = h('input', { type: 'password', autocomplete: 'off', placeholder: '64 hex characters', size: 40, spellcheck: 'false' });
    const abtn = h('button', { type: 'submit', class: 'primary', text: 'Authorize' });
    const authorize = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(abtn, () => api('POST', '/api/vms/authorize', { vm: avm.value, key: key.value.trim() }), (x) => 'authorized ' + x.vm + ', fingerprint ' + x.fingerprint).then((x) => { key.value = ''; if (x) route(); }); } },
      [field('VM', avm), field('key (from qvm-remote key show --full in the VM)', key), abtn]);
    const svm = select(names, names[0]);
    const gen = h('input', { type: 'checkbox', checked: true });
    const sbtn = h('button', { type: 'submit', text: 'Set up' });
    const sout = h('p', { class: 'muted' });
    const setup = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(sbtn, async () => { const x = await api('POST', '/api/vms/setup', { vm: svm.value, generate: gen.checked }); sout.textContent = x.note + ' (fingerprint ' + x.fingerprint + ')'; return x; }, 'setup done').then((x) => { if (x) route(); }); } },
      [field('VM', svm), h('label', { class: 'inline' }, [gen, 'generate a key in the VM if it has none']), sbtn]);
    view.append(h('h2', { text: 'Virtual Machines' }),
      card(null, [table(['', 'name', 'class', 'state', 'template', 'netvm', 'qvm-remote key', 'served', 'actions'],
        r.vms.map((v) => h('tr', { 'data-vm': v.name }, [td(labelDot(v.label)), td(h('strong', { text: v.name })), td(v.class),
          td(pill(v.state, v.state === 'Running' ? 'ok' : v.state === 'Paused' ? 'warn' : '')), td(v.template), td(v.netvm),
          td(v.has_key ? h('code', { text: v.fingerprint }) : h('span', { class: 'muted', text: '—' })),
          td(v.name === 'dom0' ? '' : yesNo(v.served, 'yes', 'no')), td(actions(v))])))]),
      h('div', { class: 'split' }, [
        card('Authorize a VM', [h('p', { class: 'muted', text: 'The key is sent once and stored 0600; the panel only ever shows its fingerprint.' }), authorize]),
        card('Quick setup', [h('p', { class: 'muted', text: 'Reads the key the VM generated (qvm-run, no shell) and authorizes it.' }), setup, sout]),
      ]));
  }

  // 4. Execute
  // Splits a typed line into words like a shell would split plain words and quotes,
  // and nothing more: no variables, no globs, no command substitution. The words are
  // shown before running, and run as an argv.
  function splitWords(line) {
    const words = [];
    let cur = '', inWord = false, q = null;
    for (let i = 0; i < line.length; i++) {
      const c = line[i];
      if (q === "'") { if (c === "'") q = null; else cur += c; continue; }
      if (q === '"') {
        if (c === '"') q = null;
        else if (c === '\\' && (line[i + 1] === '"' || line[i + 1] === '\\')) cur += line[++i];
        else cur += c;
        continue;
      }
      if (c === "'" || c === '"') { q = c; inWord = true; continue; }
      if (c === '\\' && i + 1 < line.length) { cur += line[++i]; inWord = true; continue; }
      if (/\s/.test(c)) { if (inWord) { words.push(cur); cur = ''; inWord = false; } continue; }
      cur += c; inWord = true;
    }
    if (q) throw new Error('unclosed quote');
    if (inWord) words.push(cur);
    return words;
  }
  async function execute(view) {
    const names = await vmNames((v) => v.state !== 'Halted');
    const target = select([['dom0', 'dom0']].concat(names.map((n) => [n, n])), 'dom0');
    const user = select(['user', 'root'], 'user');
    const line = h('input', { type: 'text', size: 60, placeholder: 'qvm-ls --running', spellcheck: 'false', autocomplete: 'off', 'aria-label': 'command' });
    const timeout = h('input', { type: 'number', min: 1, max: 3600, value: 300, size: 5 });
    const chips = h('div', { class: 'chips', 'aria-label': 'argv preview' });
    const tasksBox = h('div');
    const preview = () => {
      try { const w = splitWords(line.value); chips.replaceChildren(...w.map((x) => h('span', { class: 'chip', text: x }))); return w; }
      catch (e) { chips.replaceChildren(h('span', { class: 'pill bad', text: e.message })); return null; }
    };
    line.addEventListener('input', preview);
    const run = h('button', { type: 'submit', class: 'primary', text: 'Run' });
    const form = h('form', { class: 'row', onsubmit: (e) => {
      e.preventDefault();
      const argv = preview();
      if (!argv || !argv.length) return;
      act(run, async () => {
        const body = { argv, timeout: Number(timeout.value) || 300 };
        const r = target.value === 'dom0'
          ? await post('/api/exec/dom0', body)
          : await post('/api/exec/vm', Object.assign(body, { vm: target.value, user: user.value }));
        watchTask(r.task).exec = true;
        tasksBox.prepend(taskBox(r.task, target.value + '$ ' + argv.join(' ')));
        return r;
      });
    } }, [field('run in', target), field('VM user', user), field('command', line), field('timeout (s)', timeout), run]);
    view.append(h('h2', { text: 'Execute' }), card(null, [
      h('p', { class: 'muted', text: 'The command is split into words (quotes respected, nothing expanded) and run as an argv — in dom0 directly, in a VM through qvm-run --no-shell. Closing the page stops it.' }),
      form, h('div', { class: 'row' }, [h('span', { class: 'muted', text: 'argv:' }), chips]), tasksBox]));
    // Tasks this page started earlier (switching tabs keeps them running).
    for (const w of watchers.values()) if (w.exec) tasksBox.append(taskBox(w.id, 'task ' + w.id));
    line.focus();
  }

  // 5. Files
  async function files(view, params) {
    const path = params.get('path') || '';
    const r = await get('/api/files', { path });
    const names = await vmNames((v) => v.state === 'Running');
    const up = path ? path.split('/').slice(0, -1).join('/') : null;
    const fileSel = select(r.entries.filter((e) => e.type === 'file').map((e) => [(path ? path + '/' : '') + e.name, e.name + ' (' + fmtBytes(e.size) + ')']));
    const pvm = select(names, names[0]);
    const baseName = (rel) => (rel || '').split('/').pop();
    const dest = h('input', { type: 'text', size: 30, value: fileSel.value ? '/home/user/' + baseName(fileSel.value) : '', placeholder: '/home/user/file' });
    let destEdited = false;
    dest.addEventListener('input', () => { destEdited = true; });
    fileSel.addEventListener('change', () => { if (!destEdited) dest.value = '/home/user/' + baseName(fileSel.value); });
    const pbtn = h('button', { type: 'submit', class: 'primary', text: 'Push to VM' });
    const push = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(pbtn, () => post('/api/files/push', { file: fileSel.value, vm: pvm.value, dest: dest.value }, 'overwrite'), (x) => 'pushed ' + fmtBytes(x.bytes) + ' to ' + x.vm + ':' + x.dest); } },
      [field('dom0 file', fileSel), field('VM', pvm), field('destination path in the VM', dest), pbtn]);
    const lvm = select(names, names[0]);
    const src = h('input', { type: 'text', size: 30, placeholder: '/home/user/file' });
    const ldest = h('input', { type: 'text', size: 20, placeholder: 'name in dom0' });
    const size = h('span', { class: 'muted' });
    const sbtn = h('button', { type: 'button', text: 'Size?' });
    sbtn.addEventListener('click', () => act(sbtn, async () => { const x = await get('/api/files/vm-size', { vm: lvm.value, path: src.value }); size.textContent = fmtBytes(x.size); }));
    const lbtn = h('button', { type: 'submit', class: 'primary', text: 'Pull into dom0' });
    const pull = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(lbtn, () => post('/api/files/pull', { vm: lvm.value, src: src.value, dest: (path ? path + '/' : '') + (ldest.value || src.value.split('/').pop()) }, 'overwrite'), (x) => 'pulled ' + fmtBytes(x.bytes) + ' into ' + x.dest).then((x) => { if (x) route(); }); } },
      [field('VM', lvm), field('path in the VM', src), sbtn, size, field('save as', ldest), lbtn]);
    view.append(h('h2', { text: 'Files' }),
      card('dom0: ' + r.root + (path ? '/' + path : ''), [
        r.exists ? null : h('p', { class: 'notice', text: 'The directory does not exist yet; pulling a file creates nothing outside it.' }),
        up !== null ? h('p', {}, h('a', { href: '#/files' + (up ? '?path=' + encodeURIComponent(up) : ''), text: '↑ up' })) : null,
        table(['name', 'type', 'size', 'modified'], r.entries.map((e) => h('tr', {}, [
          td(e.type === 'dir' ? h('a', { href: '#/files?path=' + encodeURIComponent((path ? path + '/' : '') + e.name), text: e.name + '/' }) : e.name),
          td(e.type), td(fmtBytes(e.size), 'num'), td(fmtTime(e.mtime * 1000))])))]),
      h('div', { class: 'split' }, [card('Push dom0 → VM', [push, h('p', { class: 'muted', text: 'An existing file is never replaced without asking.' })]), card('Pull VM → dom0', [pull])]));
  }

  // 6. OpenClaw
  async function openclaw(view) {
    const r = await get('/api/openclaw');
    const out = h('pre', { class: 'out', text: '(choose Status or Logs)' });
    const rows = r.vms.map((v) => {
      const b = (label, fn, cls) => { const x = h('button', { type: 'button', class: 'small ' + (cls || ''), text: label }); x.addEventListener('click', () => act(x, fn)); return x; };
      const agent = (what) => async () => { const a = await get('/api/openclaw/agent', { vm: v.name, what }); out.textContent = '$ ' + a.command + '   [' + a.how + ']\n' + a.stdout + (a.stderr ? '\n' + a.stderr : ''); };
      const power = (action) => async () => { await api('POST', '/api/openclaw/power', { vm: v.name, action }); toast(v.name + ': ' + action + ' done'); route(); };
      return h('tr', {}, [td(labelDot(v.label)), td(h('strong', { text: v.name })), td(pill(v.state, v.state === 'Running' ? 'ok' : '')),
        td(h('div', { class: 'row' }, [b('Status', agent('status')), b('Logs', agent('logs')),
          v.state === 'Running' ? b('Restart agent', power('restart-agent')) : null,
          v.state === 'Running' ? b('Shut down', power('shutdown'), 'danger') : b('Start', power('start'))]))]);
    });
    view.append(h('h2', { text: 'OpenClaw' }),
      r.conf_error ? h('p', { class: 'notice bad', text: r.conf_error }) : null,
      card('Agent VMs (tag ' + r.tag + ')', [table(['', 'VM', 'state', 'actions'], rows), out]),
      card('Settings in use', [h('p', { class: 'muted', text: 'From ' + r.conf_path + ' (defaults if absent). Commands run inside the VM as argv through qvm-run --no-shell.' }),
        h('dl', { class: 'kv' }, Object.entries(r.commands).flatMap(([k, v]) => [h('dt', { text: k }), h('dd', {}, h('code', { text: v }))]))]));
  }

  // 7. This device
  async function device(view) {
    const d = await get('/api/device');
    const up = d.uptime_s;
    const upText = Math.floor(up / 86400) + 'd ' + Math.floor((up % 86400) / 3600) + 'h ' + Math.floor((up % 3600) / 60) + 'm';
    view.append(h('h2', { text: 'This Device' }), h('div', { class: 'grid' }, [
      card('Host', [h('dl', { class: 'kv' }, [
        h('dt', { text: 'host name' }), h('dd', { text: d.hostname }), h('dt', { text: 'OS' }), h('dd', { text: d.os || '—' }),
        h('dt', { text: 'kernel' }), h('dd', { text: d.kernel }), h('dt', { text: 'uptime' }), h('dd', { text: upText }),
        h('dt', { text: 'load' }), h('dd', { text: d.loadavg }),
        h('dt', { text: 'memory' }), h('dd', { text: fmtBytes(d.mem_available_kb * 1024) + ' free of ' + fmtBytes(d.mem_total_kb * 1024) })])]),
      card('Xen (xl info)', d.xl_ok ? [h('dl', { class: 'kv' }, d.xl.flatMap((x) => [h('dt', { text: x.key }), h('dd', { text: x.value })]))] : [h('p', { class: 'notice', text: d.xl_error })]),
      card('Running VMs', [d.vm_error ? h('p', { class: 'notice', text: d.vm_error }) : null,
        table(['VM', 'class', 'state', 'memory (MiB)', 'max (MiB)', 'vCPUs'], d.running.map((v) => h('tr', {}, [td(h('strong', { text: v.name })), td(v.class), td(v.state), td(v.memory, 'num'), td(v.maxmem, 'num'), td(v.vcpus, 'num')])))], 'wide'),
    ]));
  }

  // 8. Global config
  async function config(view, params) {
    const names = await vmNames();
    const scope = params.get('vm') || '';
    const scopeSel = select([['', 'global (qubes-prefs)']].concat(names.map((n) => [n, n + ' (qvm-prefs)'])), scope);
    scopeSel.addEventListener('change', () => { location.hash = '#/config' + (scopeSel.value ? '?vm=' + encodeURIComponent(scopeSel.value) : ''); });
    const p = await get('/api/prefs', { vm: scope });
    const rows = p.prefs.map((x) => {
      const readOnly = ['name', 'klass'].includes(x.name);
      const input = h('input', { type: 'text', value: x.value, size: 28, 'aria-label': x.name, 'data-pref': x.name, readonly: readOnly });
      const key = (scope || 'global') + ':' + x.name;
      const common = { scope: scope ? 'vm' : 'global', name: x.name };
      if (scope) common.vm = scope;
      input.addEventListener('change', () => stage({ key, label: (scope || 'global') + ' ' + x.name, old: x.value, neu: input.value,
        path: '/api/prefs/set', body: Object.assign({ value: input.value }, common) }));
      const reset = h('button', { type: 'button', class: 'small ghost', text: 'default' });
      reset.addEventListener('click', () => stage({ key, label: (scope || 'global') + ' ' + x.name + ' → default', old: x.value, neu: '(default)', always: true,
        path: '/api/prefs/set', body: Object.assign({ reset: true }, common) }));
      return h('tr', {}, [td(h('code', { text: x.name })), td(input), td(x.default ? pill('default') : ''), td(readOnly ? h('span', { class: 'muted', text: 'read-only' }) : reset)]);
    });
    const t = await get('/api/templates');
    const tname = h('input', { type: 'text', size: 20, placeholder: 'fedora-41-xfce' });
    const tbtn = h('button', { type: 'submit', text: 'Install' });
    const tasks = h('div');
    const install = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(tbtn, async () => { const r = await api('POST', '/api/templates/install', { name: tname.value.trim() }); tasks.prepend(taskBox(r.task, 'install ' + tname.value)); }); } }, [field('template', tname), tbtn]);
    const upd = (action, label) => { const b = h('button', { type: 'button', text: label, class: action === 'apply' ? 'danger' : '' }); b.addEventListener('click', () => act(b, async () => { const r = await post('/api/dom0/update', { action }); tasks.prepend(taskBox(r.task, 'dom0 update ' + action)); })); return b; };
    view.append(h('h2', { text: 'Global Config' }), card('Properties', [
      h('div', { class: 'row' }, [field('scope', scopeSel), h('span', { class: 'muted', text: 'Edits are staged; review the diff and apply them in order (failed ones stay staged).' })]),
      table(['property', 'value', '', ''], rows)]),
    h('div', { class: 'split' }, [
      card('Templates', [table(['installed template', 'state'], t.installed.map((x) => h('tr', {}, [td(x.name), td(x.state)]))),
        h('pre', { class: 'out columns', text: t.listing || '(qvm-template list printed nothing)' }), install]),
      card('dom0 updates', [h('div', { class: 'row' }, [upd('check', 'Check for updates'), upd('apply', 'Apply updates…')]), tasks]),
    ]));
  }

  // 9. VM tools
  async function tools(view, params) {
    const names = await vmNames();
    const vm = params.get('vm') || names[0];
    const vmSel = select(names, vm);
    vmSel.addEventListener('change', () => { location.hash = '#/tools?vm=' + encodeURIComponent(vmSel.value); });
    const [fw, feats, tags, svcs, qr] = await Promise.all([
      get('/api/tools/firewall', { vm }), get('/api/tools/features', { vm }), get('/api/tools/tags', { vm }),
      get('/api/tools/services', { vm }), get('/api/tools/qrexec')]);
    // Firewall
    const fwAction = select(['accept', 'drop']);
    const fwHost = h('input', { type: 'text', size: 16, placeholder: 'host or net (optional)' });
    const fwProto = select([['', 'any'], 'tcp', 'udp', 'icmp']);
    const fwPorts = h('input', { type: 'text', size: 8, placeholder: 'ports' });
    const fwAdd = h('button', { type: 'submit', text: 'Stage rule' });
    const fwForm = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault();
      const body = { vm, op: 'add', action: fwAction.value };
      if (fwHost.value) body.dsthost = fwHost.value; if (fwProto.value) body.proto = fwProto.value; if (fwPorts.value) body.dstports = fwPorts.value;
      stage({ key: 'fw:' + vm + ':' + Date.now(), label: vm + ' firewall add', old: '', neu: Object.entries(body).filter(([k]) => !['vm', 'op'].includes(k)).map(([k, v]) => k + '=' + v).join(' '), path: '/api/tools/firewall', body }); } },
    [field('action', fwAction), field('dsthost', fwHost), field('proto', fwProto), field('dstports', fwPorts), fwAdd]);
    const fwDel = h('input', { type: 'number', min: 0, size: 4, placeholder: '#' });
    const fwDelBtn = h('button', { type: 'button', text: 'Stage delete' });
    fwDelBtn.addEventListener('click', () => fwDel.value !== '' && stage({ key: 'fwdel:' + vm + ':' + fwDel.value, label: vm + ' firewall del rule ' + fwDel.value, old: 'rule ' + fwDel.value, neu: '', path: '/api/tools/firewall', body: { vm, op: 'del', rule: Number(fwDel.value) } }));
    // Devices
    const cls = select(['usb', 'block', 'pci', 'mic'], params.get('class') || 'usb');
    const devBody = h('div');
    const loadDevices = async () => {
      const d = await get('/api/tools/devices', { class: cls.value });
      devBody.replaceChildren(table(['device', 'description', ''], d.devices.map((x) => {
        const b = (a) => { const btn = h('button', { type: 'button', class: 'small', text: a + (a === 'attach' ? ' to ' : ' from ') + vm }); btn.addEventListener('click', () => act(btn, () => api('POST', '/api/tools/devices', { class: x.class, action: a, vm, device: x.id }), x.id + ': ' + a + ' done')); return btn; };
        return h('tr', {}, [td(h('code', { class: 'nowrap', text: x.id })), td(x.description), td(h('div', { class: 'row' }, [b('attach'), b('detach')]))]);
      })));
    };
    cls.addEventListener('change', () => act(null, loadDevices));
    await loadDevices();
    // Features, tags, services
    const featRows = feats.features.map((f) => {
      const input = h('input', { type: 'text', value: f.value, size: 16, 'aria-label': f.name });
      input.addEventListener('change', () => stage({ key: 'feat:' + vm + ':' + f.name, label: vm + ' feature ' + f.name, old: f.value, neu: input.value, path: '/api/tools/features', body: input.value === '' ? { vm, name: f.name, unset: true } : { vm, name: f.name, value: input.value } }));
      return h('tr', {}, [td(h('code', { text: f.name })), td(input)]);
    });
    const fName = h('input', { type: 'text', size: 16, placeholder: 'feature' });
    const fVal = h('input', { type: 'text', size: 10, placeholder: 'value' });
    const fForm = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); stage({ key: 'feat:' + vm + ':' + fName.value, label: vm + ' feature ' + fName.value, old: '', neu: fVal.value, path: '/api/tools/features', body: { vm, name: fName.value, value: fVal.value } }); } }, [fName, fVal, h('button', { type: 'submit', text: 'Stage' })]);
    const tagList = h('div', { class: 'chips' }, tags.tags.map((t) => {
      const x = h('button', { type: 'button', class: 'small', text: t + ' ✕', 'aria-label': 'remove tag ' + t });
      x.addEventListener('click', () => stage({ key: 'tag:' + vm + ':' + t, label: vm + ' remove tag', old: t, neu: '', path: '/api/tools/tags', body: { vm, action: 'del', tag: t } }));
      return x;
    }));
    const tNew = h('input', { type: 'text', size: 14, placeholder: 'new tag' });
    const tForm = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); stage({ key: 'tag:' + vm + ':' + tNew.value, label: vm + ' add tag', old: '', neu: tNew.value, path: '/api/tools/tags', body: { vm, action: 'add', tag: tNew.value } }); } }, [tNew, h('button', { type: 'submit', text: 'Stage' })]);
    const svcRows = svcs.services.map((s) => {
      const sel = select([['on', 'on'], ['off', 'off'], ['default', 'default']], s.value === '1' || s.value === 'on' ? 'on' : 'off');
      const cur = sel.value;
      sel.addEventListener('change', () => stage({ key: 'svc:' + vm + ':' + s.name, label: vm + ' service ' + s.name, old: cur, neu: sel.value, path: '/api/tools/services', body: { vm, name: s.name, state: sel.value } }));
      return h('tr', {}, [td(h('code', { text: s.name })), td(sel)]);
    });
    const sNew = h('input', { type: 'text', size: 14, placeholder: 'service' });
    const sForm = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); stage({ key: 'svc:' + vm + ':' + sNew.value, label: vm + ' service ' + sNew.value, old: 'default', neu: 'on', path: '/api/tools/services', body: { vm, name: sNew.value, state: 'on' } }); } }, [sNew, h('button', { type: 'submit', text: 'Stage enable' })]);
    const qrOut = h('pre', { class: 'out', text: '(choose a file)' });
    const qrList = h('ul', {}, qr.files.map((f) => {
      const b = h('button', { type: 'button', class: 'small ghost', text: f.name + ' (' + fmtBytes(f.size) + ')' });
      b.addEventListener('click', () => act(b, async () => { const x = await get('/api/tools/qrexec/file', { name: f.name }); qrOut.textContent = x.text; }));
      return h('li', {}, b);
    }));
    view.append(h('h2', { text: 'VM Tools' }), h('div', { class: 'row' }, [field('VM', vmSel), h('span', { class: 'muted', text: 'Edits are staged; apply them from the staged-changes box.' })]),
      h('div', { class: 'split' }, [
        card('Firewall', [h('pre', { class: 'out columns', text: fw.text }), fwForm, h('div', { class: 'row' }, [field('rule number', fwDel), fwDelBtn])]),
        card('Devices', [h('div', { class: 'row' }, field('class', cls)), devBody]),
        card('Features', [table(['feature', 'value'], featRows), fForm]),
        card('Tags', [tagList, tForm]),
        card('Services', [table(['service', 'state'], svcRows), sForm]),
        card('qrexec policy (read-only): ' + qr.dir, [qrList, qrOut]),
      ]));
  }

  // 10. qvm-remote
  async function remote(view) {
    const [r, a] = await Promise.all([get('/api/remote', { limit: 100 }), get('/api/approvals')]);
    const pendingRows = a.pending.map((p) => {
      const b = (decision, cls) => {
        const btn = h('button', { type: 'button', class: cls, text: decision === 'approve' ? 'Approve' : 'Deny', 'data-decide': decision + ':' + p.id });
        btn.addEventListener('click', () => act(btn, () => api('POST', '/api/approvals/decide', { id: p.id, decision }), p.id + ': ' + decision + 'd').then(() => route()));
        return btn;
      };
      return h('tr', { 'data-pending': p.id }, [td(h('strong', { text: p.vm })), td(h('code', { text: p.command })), td(h('code', { text: p.id })), td(p.rule),
        td(p.stdin_bytes ? fmtBytes(p.stdin_bytes) : '—'), td(countdown(p.deadline, a.now)),
        td(h('div', { class: 'row' }, [b('approve', 'primary'), b('deny', 'danger')]))]);
    });
    view.append(h('h2', { text: 'qvm-remote' }),
      card('Pending approvals', [a.pending.length ? null : h('p', { class: 'muted', text: 'No job is waiting for a decision.' }),
        table(['VM', 'command (exact text)', 'id', 'rule', 'stdin', 'refused in', ''], pendingRows)]),
      card('Connection map (' + r.mode + ' mode; daemon ' + (r.daemon.running ? 'running' : 'not running') + ')', [vmTable(r.vms)]),
      card('Command history', [table(['time', 'event', 'VM', 'details'], r.history.slice().reverse().map((l) => h('tr', {}, [td(h('code', { text: l.time })),
        td(pill(l.category, /FAIL|REJECT|DENY/.test(l.category) ? 'bad' : l.category === 'DONE' ? 'ok' : '')), td(l.vm),
        td(h('code', { text: Object.entries(l.fields).filter(([k]) => k !== 'vm').map(([k, v]) => k + '=' + v).join('  ') }))])))]));
    tickCountdowns();
  }
  // Countdowns count from the server's clock: the seconds left when the server
  // answered, minus the time since, so the page agrees with the daemon's expiry.
  function countdown(deadline, serverNow) {
    return h('span', { class: 'countdown', 'data-left': Math.max(0, deadline - serverNow), 'data-loaded': Date.now() });
  }
  function tickCountdowns() {
    for (const el of document.querySelectorAll('.countdown[data-left]')) {
      const s = Math.max(0, Number(el.dataset.left) - Math.floor((Date.now() - Number(el.dataset.loaded)) / 1000));
      el.textContent = Math.floor(s / 60) + 'm ' + String(s % 60).padStart(2, '0') + 's';
      el.classList.toggle('expired', s === 0);
    }
  }
  setInterval(tickCountdowns, 1000);

  // 11. Backup
  async function backup(view) {
    const [names, cfg] = await Promise.all([vmNames(), get('/api/backup/config')]);
    const checks = names.map((n) => h('label', { class: 'inline' }, [h('input', { type: 'checkbox', value: n, 'data-vm': n }), n]));
    const destVm = select([['', 'dom0']].concat(names.map((n) => [n, n])), '');
    const dest = h('input', { type: 'text', size: 28, value: '/home/user/backups' });
    const pass = h('input', { type: 'password', autocomplete: 'new-password', size: 20 });
    const pass2 = h('input', { type: 'password', autocomplete: 'new-password', size: 20 });
    const compress = h('input', { type: 'checkbox', checked: true });
    const tasks = h('div');
    const bbtn = h('button', { type: 'submit', class: 'primary', text: 'Start backup' });
    const form = h('form', { onsubmit: (e) => { e.preventDefault();
      if (pass.value !== pass2.value) { toast('the passphrases differ', true); return; }
      const body = { dest: dest.value, passphrase: pass.value, compress: compress.checked, vms: checks.map((c) => c.firstChild).filter((c) => c.checked).map((c) => c.value) };
      if (destVm.value) body.dest_vm = destVm.value;
      act(bbtn, async () => { const r = await api('POST', '/api/backup/start', body); pass.value = pass2.value = ''; tasks.prepend(taskBox(r.task, 'qvm-backup → ' + (destVm.value || 'dom0') + ':' + dest.value)); });
    } }, [h('div', { class: 'row' }, checks.length ? checks : h('span', { class: 'muted', text: 'no VMs' })),
      h('p', { class: 'muted', text: 'None ticked: the VMs whose include_in_backups is True.' }),
      h('div', { class: 'row' }, [field('destination VM', destVm), field('path', dest), field('passphrase', pass), field('again', pass2), h('label', { class: 'inline' }, [compress, 'compress']), bbtn])]);
    const create = h('button', { type: 'button', class: 'primary', text: 'Back up config, policy and keys' });
    create.addEventListener('click', () => act(create, () => api('POST', '/api/backup/config/create', {}), (x) => 'wrote ' + x.name + ' (' + x.entries.length + ' files)').then(() => route()));
    const rows = cfg.archives.map((x) => {
      const b = h('button', { type: 'button', class: 'small', text: 'Restore…' });
      b.addEventListener('click', () => act(b, async () => {
        const check = await api('POST', '/api/backup/config/restore', { name: x.name });
        const detail = check.files.map((f) => f.entry + ' → ' + f.dest + ' (' + fmtBytes(f.bytes) + ')').join('\n');
        if (!(await confirmDialog('Restore these files from ' + x.name + '? Current files are replaced.', detail))) throw new Cancelled();
        return api('POST', '/api/backup/config/restore', { name: x.name, confirm: true });
      }, (r) => r.note));
      return h('tr', {}, [td(h('code', { text: x.name })), td(fmtBytes(x.size), 'num'), td(b)]);
    });
    view.append(h('h2', { text: 'Backup' }), card('Qubes backup (qvm-backup)', [form, tasks]),
      card('qvm-remote config backup', [h('p', { class: 'muted', text: 'Archives go to ' + cfg.dir + ' (mode 0600). A restore refuses absolute paths, .. and unknown files, and checks every file first.' }),
        h('div', { class: 'row' }, create), table(['archive', 'size', ''], rows)]));
  }

  // 12. Policy
  async function policy(view) {
    const p = await get('/api/policy');
    const text = h('textarea', { class: 'policy', spellcheck: 'false', 'aria-label': 'policy text', value: p.text });
    if (!p.exists) text.placeholder = '# no policy file: every authorised VM is full\n# vm  action  pattern…\nwork  allow  qvm-ls *';
    const lintBox = h('div');
    const showLint = (l) => lintBox.replaceChildren(...[
      h('p', {}, [l.ok ? pill('lint ok', 'ok') : pill('lint failed', 'bad')]),
      l.errors.length ? h('ul', { class: 'plain' }, l.errors.map((e) => h('li', { class: 'notice bad', text: e }))) : null,
      l.warnings.length ? h('ul', { class: 'plain' }, l.warnings.map((w) => h('li', { class: 'notice', text: w }))) : null].filter(Boolean));
    showLint(p.lint);
    const lintBtn = h('button', { type: 'button', text: 'Lint' });
    lintBtn.addEventListener('click', () => act(lintBtn, async () => showLint(await api('POST', '/api/policy/lint', { text: text.value }))));
    const saveBtn = h('button', { type: 'button', class: 'primary', text: 'Save' });
    saveBtn.addEventListener('click', () => act(saveBtn, async () => {
      if (!(await confirmDialog('Save the policy? The daemon uses it for the next job.'))) throw new Cancelled();
      try { return await api('POST', '/api/policy/save', { text: text.value }); }
      catch (e) { if (e.status === 422) showLint({ ok: false, errors: e.body.errors || [], warnings: e.body.warnings || [] }); throw e; }
    }, 'policy saved').then((x) => { if (x) route(); }));
    const cvm = select(p.served.length ? p.served : ['work']);
    const cmd = h('input', { type: 'text', size: 40, placeholder: 'qvm-ls --running', spellcheck: 'false' });
    const verdict = h('div');
    const cbtn = h('button', { type: 'submit', text: 'Check' });
    const checkForm = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(cbtn, async () => {
      const r = await api('POST', '/api/policy/check', { vm: cvm.value, command: cmd.value });
      verdict.replaceChildren(h('p', {}, [pill(r.decision, r.decision === 'allow' ? 'ok' : r.decision === 'ask' ? 'warn' : 'bad'), ' ', h('span', { class: 'muted', text: r.rule })]),
        h('p', { class: 'muted', text: r.command }));
    }); } }, [field('VM', cvm), field('command', cmd), cbtn]);
    const dvm = select(p.served.length ? p.served : ['work']);
    const minutes = h('input', { type: 'number', min: 1, max: 120, value: 30, size: 4 });
    const don = h('button', { type: 'button', class: 'danger', text: 'Dev mode on' });
    don.addEventListener('click', () => act(don, async () => {
      if (!(await confirmDialog('Give ' + dvm.value + ' full access (anything, scripts included) for ' + minutes.value + ' minutes?'))) throw new Cancelled();
      return api('POST', '/api/devmode', { vm: dvm.value, action: 'on', minutes: Number(minutes.value) });
    }, 'dev mode on').then((x) => { if (x) route(); }));
    const doff = h('button', { type: 'button', text: 'Off' });
    doff.addEventListener('click', () => act(doff, () => api('POST', '/api/devmode', { vm: dvm.value, action: 'off' }), 'dev mode off').then(() => route()));
    const devRows = p.devmode.map((d) => h('tr', {}, [td(h('strong', { text: d.vm })), td(pill(d.state, d.state === 'active' ? 'warn' : '')),
      td(d.state === 'active' ? countdown(d.expires, p.now) : (d.why || '—')),
      td(d.expires ? fmtTime(d.expires * 1000) : '')]));
    view.append(h('h2', { text: 'Policy' }),
      h('div', { class: 'split' }, [
        card('Policy file: ' + p.path, [p.read_error ? h('p', { class: 'notice bad', text: p.read_error }) : null, text,
          h('div', { class: 'row' }, [lintBtn, saveBtn]), lintBox]),
        h('div', {}, [
          card('Levels per VM', [table(['VM', 'level', 'line'], p.levels.map((l) => h('tr', {}, [td(l.vm), td(pill(l.level)), td(l.line, 'num')]))),
            h('details', {}, [h('summary', { text: 'what the levels allow' }), h('pre', { class: 'out', text: p.level_help })])]),
          card('Check a command', [checkForm, verdict]),
          card('Dev mode', [h('p', { class: 'muted', text: 'A time-limited full overlay in the run dir; the policy file is never rewritten. The countdown is the server\'s expiry.' }),
            h('div', { class: 'row' }, [field('VM', dvm), field('minutes', minutes), don, doff]),
            table(['VM', 'state', 'left', 'expires'], devRows)]),
        ]),
      ]));
    tickCountdowns();
  }

  const TABS = [
    ['dashboard', 'Dashboard', dashboard], ['logs', 'Logs', logs], ['vms', 'Virtual Machines', vms],
    ['execute', 'Execute', execute], ['files', 'Files', files], ['openclaw', 'OpenClaw', openclaw],
    ['device', 'This Device', device], ['config', 'Global Config', config], ['tools', 'VM Tools', tools],
    ['remote', 'qvm-remote', remote], ['backup', 'Backup', backup], ['policy', 'Policy', policy],
  ];

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [name, query] = raw.split('?');
    return [TABS.find((t) => t[0] === name) || TABS[0], new URLSearchParams(query || '')];
  }

  let routeSeq = 0;
  async function route() {
    const seq = ++routeSeq;
    for (const es of tabBound) es.close();
    tabBound.clear();
    for (const t of timers) clearInterval(t);
    timers.clear();
    const [tab, params] = parseHash();
    for (const a of document.querySelectorAll('#tab-list a')) {
      if (a.dataset.tab === tab[0]) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    document.title = tab[1] + ' · qvm-remote';
    const view = $('view');
    view.dataset.ready = '';
    view.dataset.tab = tab[0];
    const fresh = h('div');
    if (!csrf) { loggedOut(); return; }
    try {
      await tab[2](fresh, params);
    } catch (e) {
      if (e.status === 401) return;
      fresh.replaceChildren(h('h2', { text: tab[1] }), h('p', { class: 'notice bad', text: 'Could not load this tab: ' + errText(e) }));
    }
    if (seq !== routeSeq) return;
    view.replaceChildren(...fresh.childNodes);
    view.dataset.ready = '1';
  }

  function loggedOut() {
    csrf = null;
    $('session-state').textContent = 'not logged in';
    $('logout').hidden = true;
    const view = $('view');
    view.replaceChildren(h('h2', { text: 'Log in' }), h('div', { class: 'card' }, [
      h('p', { text: 'This panel needs a session. In a dom0 terminal, run:' }),
      h('pre', { class: 'out', text: 'qvm-remote-dom0 panel url --open' }),
      h('p', { class: 'muted', text: 'It prints a one-time login link (valid for five minutes) and opens it in your browser.' })]));
    view.dataset.ready = '1';
    view.dataset.tab = 'login';
  }

  async function start() {
    $('tab-list').replaceChildren(...TABS.map(([id, name], i) => h('li', {}, h('a', { href: '#/' + id, 'data-tab': id }, [h('span', { class: 'num', text: String(i + 1) }), name]))));
    $('staged-apply').addEventListener('click', applyStaged);
    $('staged-clear').addEventListener('click', () => { staged.length = 0; renderStaged(); });
    $('staged-toggle').addEventListener('click', (e) => {
      const box = $('staged');
      const collapsed = box.classList.toggle('collapsed');
      e.target.textContent = collapsed ? 'Show' : 'Hide';
      e.target.setAttribute('aria-expanded', String(!collapsed));
    });
    $('logout').addEventListener('click', async () => { await act(null, () => api('POST', '/api/logout', {})); loggedOut(); });
    window.addEventListener('hashchange', route);
    // Alt+1 … Alt+9, Alt+0, Alt+-, Alt+= switch tabs from the keyboard.
    document.addEventListener('keydown', (e) => {
      if (!e.altKey || e.ctrlKey || e.metaKey) return;
      const i = '1234567890-='.indexOf(e.key);
      if (i >= 0 && TABS[i]) { location.hash = '#/' + TABS[i][0]; e.preventDefault(); }
    });
    try {
      const r = await fetch('/api/session', { credentials: 'same-origin' });
      if (r.ok) {
        const s = await r.json();
        csrf = s.csrf;
        $('session-state').textContent = 'logged in · session ends after ' + Math.round(s.expires_in_s / 60) + ' min idle';
        $('logout').hidden = false;
      }
    } catch (_) { /* shown as not logged in */ }
    route();
  }

  start();
}());
