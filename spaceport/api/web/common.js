// Shared by the service pages: the API key (kept in sessionStorage), API calls, link tokens for URLs that
// cannot carry a header (EventSource, downloads, the viewer), live job events, and formatting.

const KEY_STORAGE = 'spaceport.apiKey';
export const FINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);
const TOKEN_MARGIN_MS = 5 * 60 * 1000; // ask for a new link token this long before the old one expires

export class ApiError extends Error {
    constructor(status, detail) {
        super(detail);
        this.status = status;
    }
}

// -- the API key ---------------------------------------------------------------------------------------

export function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE);
}

function forgetKey() {
    sessionStorage.removeItem(KEY_STORAGE);
}

export function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
        if (value === null || value === undefined || value === false) {
            continue;
        }
        if (name === 'className') {
            node.className = value;
        } else {
            node.setAttribute(name, value === true ? '' : String(value));
        }
    }
    for (const child of children.flat()) {
        if (child !== null && child !== undefined) {
            node.append(child instanceof Node ? child : String(child));
        }
    }
    return node;
}

function showKeyStatus(key) {
    const status = document.getElementById('key-status');
    if (!status) {
        return;
    }
    status.replaceChildren();
    if (!key) {
        return;
    }
    const forget = element('button', { type: 'button', className: 'button' }, 'Forget key');
    forget.addEventListener('click', () => {
        forgetKey();
        window.location.reload();
    });
    status.append(element('span', {}, 'Key ', element('code', {}, `${key.slice(0, 7)}…`)), forget);
}

// Shows the key form in place of the page's content until a key the server accepts is entered, then calls
// onReady(key). The key is checked with GET /v1/jobs and kept for this browser tab only (sessionStorage).
export function requireKey(onReady, reason = null) {
    const content = document.getElementById('content');
    const key = apiKey();
    if (key && !reason) {
        content.hidden = false;
        showKeyStatus(key);
        onReady(key);
        return;
    }
    content.hidden = true;
    showKeyStatus(null);
    const gate = document.getElementById('key-gate');
    gate.hidden = false;
    gate.replaceChildren();
    const input = element('input', {
        id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
        'aria-describedby': 'api-key-hint api-key-error'
    });
    const error = element('p', { id: 'api-key-error', className: 'message error', role: 'alert' });
    if (reason) {
        error.textContent = reason;
    }
    const form = element('form', { className: 'card key-card', 'aria-labelledby': 'key-title' },
        element('h1', { id: 'key-title' }, 'Enter your API key'),
        element('p', { id: 'api-key-hint', className: 'lead' },
            'The key is kept in this browser tab only, until you close it. Create one on the server with ',
            element('code', {}, 'spaceport keys create --owner NAME'), '.'),
        element('label', { for: 'api-key', className: 'key-label' }, 'API key'),
        element('div', { className: 'key-row' }, input,
            element('button', { type: 'submit', className: 'button primary' }, 'Continue')),
        error);
    form.addEventListener('submit', async (event) => {
        event.preventDefault();
        const candidate = input.value.trim();
        error.textContent = '';
        try {
            await apiFetch('/v1/jobs?limit=1', {}, candidate);
        } catch (exc) {
            error.textContent = exc instanceof ApiError && exc.status === 401
                ? `This key was not accepted: ${exc.message}` : `The server could not be reached: ${exc.message}`;
            input.focus();
            return;
        }
        sessionStorage.setItem(KEY_STORAGE, candidate);
        gate.hidden = true;
        gate.replaceChildren();
        requireKey(onReady);
    });
    gate.append(form);
    input.focus();
}

// -- API calls -----------------------------------------------------------------------------------------

async function apiFetch(path, options = {}, key = apiKey()) {
    const headers = { Accept: 'application/json', ...(options.headers ?? {}) };
    if (key) {
        headers.Authorization = `Bearer ${key}`;
    }
    const response = await fetch(path, { ...options, headers });
    if (!response.ok) {
        throw new ApiError(response.status, await errorDetail(response));
    }
    return response.status === 204 ? null : response.json();
}

export async function errorDetail(response) {
    try {
        const body = await response.json();
        if (typeof body.detail === 'string') {
            return body.detail;
        }
        return JSON.stringify(body.detail ?? body);
    } catch {
        return `${response.status} ${response.statusText}`;
    }
}

// An API call with the stored key; a 401 (key revoked meanwhile) brings the key form back.
export async function api(path, options = {}) {
    try {
        return await apiFetch(path, options);
    } catch (exc) {
        if (exc instanceof ApiError && exc.status === 401) {
            forgetKey();
            requireKey(() => window.location.reload(), `The server refused the key: ${exc.message}`);
        }
        throw exc;
    }
}

// -- link tokens ---------------------------------------------------------------------------------------

const tokens = new Map(); // job id -> {token, expiresAt}

// A short-lived token for ?token= on one job's event stream, artifact downloads and viewer camera.
export async function linkToken(jobId, { fresh = false } = {}) {
    const cached = tokens.get(jobId);
    if (!fresh && cached && cached.expiresAt - Date.now() > TOKEN_MARGIN_MS) {
        return cached.token;
    }
    const issued = await api(`/v1/jobs/${encodeURIComponent(jobId)}/link-token`, { method: 'POST' });
    tokens.set(jobId, { token: issued.token, expiresAt: Date.now() + issued.expires_in_s * 1000 });
    return issued.token;
}

export function withToken(url, token) {
    const full = new URL(url, window.location.href);
    full.searchParams.set('token', token);
    return full.pathname + full.search;
}

// -- live events ---------------------------------------------------------------------------------------

// Follows a job's server-sent events: onEvent(event) for each (see EventOut), until its final state event.
// Reconnects with a fresh token after an error, resuming after the last event seen. Returns {close()}.
export function followJob(jobId, onEvent) {
    let lastId = 0;
    let source = null;
    let closed = false;
    let retryMs = 1000;

    async function open(fresh) {
        if (closed) {
            return;
        }
        let token;
        try {
            token = await linkToken(jobId, { fresh });
        } catch (exc) {
            if (exc instanceof ApiError && exc.status < 500 && exc.status !== 429) {
                return; // the job is gone or the key was refused: nothing to follow
            }
            window.setTimeout(() => open(true), retryMs);
            retryMs = Math.min(retryMs * 2, 30000);
            return;
        }
        const url = `/v1/jobs/${encodeURIComponent(jobId)}/events?after=${lastId}&token=${encodeURIComponent(token)}`;
        source = new EventSource(url);
        source.onmessage = (message) => {
            retryMs = 1000;
            const event = JSON.parse(message.data);
            lastId = Math.max(lastId, event.id);
            onEvent(event);
            if (event.kind === 'state' && FINAL_STATES.has(event.data?.state)) {
                close();
            }
        };
        source.onerror = () => {
            // the stream ends after the final state event (the server closes it); EventSource would reconnect,
            // and a refused token (401) closes it for good: reopen with a fresh token in both cases
            source.close();
            if (!closed) {
                window.setTimeout(() => open(true), retryMs);
                retryMs = Math.min(retryMs * 2, 30000);
            }
        };
    }

    function close() {
        closed = true;
        if (source) {
            source.close();
        }
    }

    open(false);
    return { close };
}

// -- formatting ----------------------------------------------------------------------------------------

export function formatBytes(bytes) {
    if (bytes === null || bytes === undefined) {
        return '—';
    }
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let value = bytes;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
        value /= 1000;
        unit += 1;
    }
    return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
        return '—';
    }
    const total = Math.max(0, Math.round(seconds));
    const hours = Math.floor(total / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const secs = total % 60;
    if (hours) {
        return `${hours} h ${String(minutes).padStart(2, '0')} min`;
    }
    if (minutes >= 10) {
        return `${minutes} min`;
    }
    if (minutes) {
        return `${minutes} min ${String(secs).padStart(2, '0')} s`;
    }
    return `${secs} s`;
}

export function formatTime(iso) {
    if (!iso) {
        return '—';
    }
    const date = new Date(iso);
    const sameDay = date.toDateString() === new Date().toDateString();
    return sameDay
        ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
        : date.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

// Seconds a job has been running (or waiting, while queued), up to now or to its end.
export function elapsedSeconds(job) {
    const start = job.started_at ?? job.created_at;
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    return (end - new Date(start)) / 1000;
}

export const STEP_LABELS = {
    full: 'Full pipeline',
    sfm: 'SfM only',
    train: '3DGS only',
    compress: 'Compression only'
};

export function stateBadge(state, cancelRequested = false) {
    const text = cancelRequested && !FINAL_STATES.has(state) ? 'cancelling' : state;
    return element('span', { className: `badge ${state}` }, text);
}

// A progress bar (role progressbar, 0-100) with its value as text beside it.
export function meter(label, large = false) {
    const fill = element('div', { className: 'meter-fill' });
    const value = element('span', { className: 'meter-value', 'aria-hidden': 'true' }, '0 %');
    const bar = element('div', {
        className: `meter${large ? ' large' : ''}`, role: 'progressbar', 'aria-label': label,
        'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': 0
    }, element('div', { className: 'meter-track' }, fill), value);
    return {
        node: bar,
        set(fraction, state = null) {
            const percent = Math.round(Math.min(Math.max(fraction ?? 0, 0), 1) * 100);
            fill.style.width = `${percent}%`;
            value.textContent = `${percent} %`;
            bar.setAttribute('aria-valuenow', percent);
            bar.setAttribute('aria-valuetext', `${percent} percent${state ? `, ${state}` : ''}`);
            if (state) {
                bar.dataset.state = state;
            }
        }
    };
}
