// One job's page: state and progress (live), results to download, metrics, and its report.
import {
    api, ApiError, element, elapsedSeconds, FINAL_STATES, followJob, formatBytes, formatDuration, formatTime,
    linkToken, meter, requireKey, stateBadge, STEP_LABELS, withToken
} from './common.js';
import { applyEvent, cancelJob, hasViewer, remainingSeconds } from './job-state.js';

const ARTIFACT_NOTES = {
    'scene.sog': 'Compressed splat (PlayCanvas SOG)',
    'splat.ply': 'Trained 3D Gaussian splat (PLY)',
    'sparse.zip': 'COLMAP model: cameras, images, points3D',
    'report.html': 'Report page',
    'report.json': 'Report figures (JSON)',
    'logs.zip': 'Logs of every stage',
    'scene.spz': 'Niantic SPZ (made on first download)',
    'scene.splat': 'antimatter15 .splat, no higher SH bands (made on first download)',
    'scene.compressed.ply': 'PlayCanvas / SuperSplat compressed PLY (made on first download)'
};
const LINK_REFRESH_MS = 10 * 60 * 1000; // links carry a token valid for an hour: rewrite them well before

const $ = (id) => document.getElementById(id);

function jobIdFromPath() {
    const match = window.location.pathname.match(/^\/jobs\/([^/]+)/);
    return match ? decodeURIComponent(match[1]) : '';
}

function formatValue(value) {
    if (typeof value === 'number') {
        return Number.isInteger(value) ? value.toLocaleString('en-US') : value.toPrecision(4).replace(/\.?0+$/, '');
    }
    if (Array.isArray(value)) {
        return value.length > 6 ? `[${value.length} values]` : value.map(formatValue).join(', ');
    }
    if (value === null) {
        return '—';
    }
    return String(value);
}

// Rows (name, value) of a nested metrics object, names joined with dots.
function flatten(object, prefix = '') {
    const rows = [];
    for (const [name, value] of Object.entries(object)) {
        const path = prefix ? `${prefix}.${name}` : name;
        if (value && typeof value === 'object' && !Array.isArray(value)) {
            rows.push(...flatten(value, path));
        } else {
            rows.push([path, formatValue(value)]);
        }
    }
    return rows;
}

class JobPage {
    constructor(jobId) {
        this.jobId = jobId;
        this.job = null;
        this.stream = null;
        this.meter = meter(`Progress of job ${jobId}`, true);
        $('job-meter').append(this.meter.node);
        $('job-id').textContent = jobId;
        document.title = `Job ${jobId} · Spaceport`;
        window.setInterval(() => this.tick(), 1000);
        window.setInterval(() => this.renderArtifacts(), LINK_REFRESH_MS);
        this.load();
    }

    async load() {
        try {
            this.job = await api(`/v1/jobs/${encodeURIComponent(this.jobId)}`);
        } catch (exc) {
            $('job-error').textContent = exc instanceof ApiError && exc.status === 404
                ? `No job ${this.jobId} for your key: ${exc.message}` : `The job could not be loaded: ${exc.message}`;
            return;
        }
        $('job-body').hidden = false;
        this.render();
        this.renderArtifacts();
        this.follow();
    }

    follow() {
        if (this.stream || FINAL_STATES.has(this.job.state)) {
            return;
        }
        this.stream = followJob(this.jobId, (event) => {
            const ended = applyEvent(this.job, event);
            this.render();
            const stageEnded = event.kind === 'stage' && event.data?.state && event.data.state !== 'running';
            if (ended || stageEnded) {
                this.reload(ended); // new results and metrics
            }
        });
    }

    async reload(announceIt) {
        try {
            this.job = await api(`/v1/jobs/${encodeURIComponent(this.jobId)}`);
        } catch {
            return;
        }
        this.render();
        this.renderArtifacts();
        if (announceIt) {
            $('job-status').textContent = `Job ${this.jobId} ${this.job.state}.`;
        }
    }

    render() {
        const job = this.job;
        $('job-badge').replaceChildren(stateBadge(job.state, job.cancel_requested));
        $('job-lead').textContent = `${STEP_LABELS[job.steps] ?? job.steps} · preset ${job.preset}`;
        this.meter.set(job.progress, job.state);
        $('fact-state').textContent = job.cancel_requested && !FINAL_STATES.has(job.state) ? 'cancelling' : job.state;
        $('fact-stage').textContent = job.stage ?? '—';
        $('fact-created').textContent = formatTime(job.created_at);
        $('fact-started').textContent = formatTime(job.started_at);
        $('fact-finished').textContent = formatTime(job.finished_at);
        $('fact-preset').textContent = job.preset;
        $('fact-input').textContent = job.input_url;
        $('fact-notify').textContent = job.notify?.email || job.notify?.webhook_url
            ? [job.notify.email, job.notify.webhook_url].filter(Boolean).join(', ') : 'none';
        $('job-error').textContent = job.error ? `The job failed${job.stage ? ` at ${job.stage}` : ''}: ${job.error}` : '';
        this.tick();
        this.renderActions();
        this.renderMetrics();
    }

    tick() {
        if (!this.job) {
            return;
        }
        $('fact-elapsed').textContent = this.job.state === 'queued' ? 'waiting' : formatDuration(elapsedSeconds(this.job));
        $('fact-eta').textContent = formatDuration(remainingSeconds(this.job));
    }

    renderActions() {
        const job = this.job;
        const viewable = hasViewer(job) || (job.artifacts ?? []).some((item) => item.name === 'scene.sog');
        const actionsKey = `${viewable}|${FINAL_STATES.has(job.state)}|${job.cancel_requested}`;
        if (actionsKey === this.actionsKey) {
            return; // unchanged: keep the buttons (and the keyboard focus on them)
        }
        this.actionsKey = actionsKey;
        const actions = [];
        if (viewable) {
            actions.push(element('a', { className: 'button primary', href: `/jobs/${encodeURIComponent(job.id)}/view` },
                'Open viewer'));
        }
        if (!FINAL_STATES.has(job.state)) {
            const cancel = element('button', { type: 'button', className: 'button danger', disabled: job.cancel_requested },
                job.cancel_requested ? 'Cancelling…' : 'Cancel job');
            cancel.addEventListener('click', () => this.cancel(cancel));
            actions.push(cancel);
        }
        $('job-actions').replaceChildren(...actions);
    }

    async cancel(button) {
        button.disabled = true;
        try {
            Object.assign(this.job, await cancelJob(this.jobId));
            this.render();
            $('job-status').textContent = this.job.state === 'cancelled' ? `Job ${this.jobId} cancelled.`
                : 'Cancel requested: the running stage stops within seconds.';
        } catch (exc) {
            button.disabled = false;
            $('job-error').textContent = `The job could not be cancelled: ${exc.message}`;
        }
    }

    async renderArtifacts() {
        const artifacts = this.job?.artifacts ?? [];
        const container = $('artifacts');
        if (!artifacts.length) {
            container.replaceChildren(element('p', { className: 'hint' }, FINAL_STATES.has(this.job?.state)
                ? 'This job left no results.' : 'Results appear here as the stages finish.'));
            this.renderReport(null);
            return;
        }
        let token;
        try {
            token = await linkToken(this.jobId);
        } catch (exc) {
            container.replaceChildren(element('p', { className: 'message error' }, `Links unavailable: ${exc.message}`));
            return;
        }
        const rows = artifacts.map((artifact) => {
            const href = withToken(new URL(artifact.url).pathname, token);
            return element('tr', {},
                element('td', {}, element('span', { className: 'mono' }, artifact.name),
                    element('span', { className: 'sub' }, ARTIFACT_NOTES[artifact.name] ?? '')),
                element('td', { className: 'num' }, artifact.size === null
                    ? (artifact.name.endsWith('.zip') ? 'archive' : 'on\u00a0download') : formatBytes(artifact.size)),
                element('td', { className: 'actions' }, element('a', {
                    className: 'button small', href, download: `${this.jobId}-${artifact.name}`,
                    'aria-label': `Download ${artifact.name}`
                }, 'Download')));
        });
        container.replaceChildren(element('div', { className: 'table-wrap' }, element('table', {},
            element('thead', {}, element('tr', {}, element('th', { scope: 'col' }, 'File'),
                element('th', { scope: 'col', className: 'num' }, 'Size'),
                element('th', { scope: 'col' }, element('span', { className: 'visually-hidden' }, 'Download')))),
            element('tbody', {}, rows))));
        const report = artifacts.find((artifact) => artifact.name === 'report.html');
        this.renderReport(report ? withToken(new URL(report.url).pathname, token) : null);
    }

    renderReport(url) {
        const container = $('report');
        const current = container.querySelector('iframe');
        if (url && current) {
            return; // keep the open report (and its scroll position); its token was good when it loaded
        }
        if (!url) {
            const why = ['full', 'train'].includes(this.job?.steps)
                ? 'The report is made at the end of the job.'
                : `${STEP_LABELS[this.job?.steps] ?? 'This step selection'} makes no report: the full pipeline and 3DGS only do.`;
            container.replaceChildren(element('p', { className: 'hint' }, why));
            return;
        }
        // sandboxed without same-origin: the report's scripts (plots, viewer) run, but cannot read this page's key
        container.replaceChildren(element('iframe', {
            className: 'report-frame', src: url, title: `Report of job ${this.jobId}`, sandbox: 'allow-scripts',
            referrerpolicy: 'no-referrer'
        }));
    }

    renderMetrics() {
        const metrics = this.job.metrics ?? {};
        const container = $('metrics');
        if (!Object.keys(metrics).length) {
            container.replaceChildren(element('p', { className: 'hint' }, 'No figures yet.'));
            return;
        }
        // one group per stage (the job's metrics are {stage: {...}}), nested names joined with dots
        const items = [];
        for (const [group, value] of Object.entries(metrics)) {
            if (value && typeof value === 'object' && !Array.isArray(value)) {
                items.push(element('dt', { className: 'group' }, group));
                flatten(value).forEach(([name, text]) => items.push(element('dt', {}, name), element('dd', {}, text)));
            } else {
                items.push(element('dt', {}, group), element('dd', {}, formatValue(value)));
            }
        }
        container.replaceChildren(element('dl', { className: 'metrics' }, items));
    }
}

requireKey(() => new JobPage(jobIdFromPath()));
