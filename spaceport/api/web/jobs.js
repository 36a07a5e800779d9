// The jobs page: the owner's jobs (GET /v1/jobs), each unfinished one followed live through its event stream.
import {
    api, element, elapsedSeconds, FINAL_STATES, followJob, formatDuration, formatTime, meter, requireKey, stateBadge,
    STEP_LABELS
} from './common.js';
import { applyEvent, cancelJob, hasViewer, remainingSeconds } from './job-state.js';

const PAGE_SIZE = 20;
const REFRESH_MS = 20000;

const $ = (id) => document.getElementById(id);

function announce(text) {
    $('jobs-status').textContent = text;
}

class JobRow {
    constructor(job) {
        this.job = job;
        this.stream = null;
        this.meter = meter(`Progress of job ${job.id}`);
        this.cells = {
            state: element('td'), stage: element('td', { className: 'stage' }),
            elapsed: element('td', { className: 'num' }), eta: element('td', { className: 'num' }),
            actions: element('td', { className: 'actions' })
        };
        const link = element('a', { className: 'job-id', href: `/jobs/${encodeURIComponent(job.id)}` }, job.id);
        this.node = element('tr', { 'data-job-id': job.id },
            element('td', {}, link, element('span', { className: 'sub' }, `Submitted ${formatTime(job.created_at)}`)),
            element('td', {}, STEP_LABELS[job.steps] ?? job.steps, element('span', { className: 'sub' }, job.preset)),
            this.cells.state, this.cells.stage, element('td', {}, this.meter.node),
            this.cells.elapsed, this.cells.eta, this.cells.actions);
        this.render();
    }

    update(job) {
        const wasFinal = FINAL_STATES.has(this.job.state);
        this.job = { ...this.job, ...job };
        if (!wasFinal && FINAL_STATES.has(this.job.state)) {
            announce(`Job ${this.job.id} ${this.job.state}.`);
        }
        this.render();
    }

    follow() {
        if (this.stream || FINAL_STATES.has(this.job.state)) {
            return;
        }
        this.stream = followJob(this.job.id, (event) => {
            const ended = applyEvent(this.job, event);
            this.update({});
            if (ended) {
                // the event stream has the state; the job itself has the exact end time and final figures
                api(`/v1/jobs/${encodeURIComponent(this.job.id)}`).then((job) => this.update(job)).catch(() => {});
            }
        });
    }

    stop() {
        this.stream?.close();
    }

    render() {
        const job = this.job;
        this.cells.state.replaceChildren(stateBadge(job.state, job.cancel_requested));
        this.cells.stage.textContent = job.stage ?? '—';
        this.meter.set(job.progress, job.state);
        this.tick();
        // rebuild the buttons only when they change: a rebuilt button would lose the keyboard focus
        const actionsKey = `${hasViewer(job)}|${FINAL_STATES.has(job.state)}|${job.cancel_requested}`;
        if (actionsKey === this.actionsKey) {
            return;
        }
        this.actionsKey = actionsKey;
        const actions = [];
        if (hasViewer(job)) {
            actions.push(element('a', {
                className: 'button small', href: `/jobs/${encodeURIComponent(job.id)}/view`,
                'aria-label': `View the splat of job ${job.id}`
            }, 'View'));
        }
        if (!FINAL_STATES.has(job.state)) {
            const cancel = element('button', {
                type: 'button', className: 'button small danger', 'aria-label': `Cancel job ${job.id}`,
                disabled: job.cancel_requested
            }, job.cancel_requested ? 'Cancelling…' : 'Cancel');
            cancel.addEventListener('click', () => this.cancel(cancel));
            actions.push(cancel);
        }
        const focused = this.cells.actions.contains(document.activeElement);
        this.cells.actions.replaceChildren(...actions);
        if (focused) {
            this.node.querySelector('.job-id').focus(); // the focused button was replaced: keep focus in the row
        }
    }

    tick() {
        const job = this.job;
        this.cells.elapsed.textContent = job.state === 'queued' ? 'waiting' : formatDuration(elapsedSeconds(job));
        this.cells.eta.textContent = formatDuration(remainingSeconds(job));
    }

    async cancel(button) {
        button.disabled = true;
        $('jobs-error').textContent = '';
        try {
            const job = await cancelJob(this.job.id);
            this.update(job);
            announce(job.state === 'cancelled' ? `Job ${job.id} cancelled.`
                : `Cancel requested for job ${job.id}: the running stage stops within seconds.`);
        } catch (exc) {
            button.disabled = false;
            $('jobs-error').textContent = `Job ${this.job.id} could not be cancelled: ${exc.message}`;
        }
    }
}

class JobsPage {
    constructor() {
        this.rows = new Map();
        this.cursor = null;
        $('refresh').addEventListener('click', () => this.load(true));
        $('more').addEventListener('click', () => this.loadMore());
        window.setInterval(() => this.rows.forEach((row) => {
            if (!FINAL_STATES.has(row.job.state)) {
                row.tick();
            }
        }), 1000);
        window.setInterval(() => this.load(false), REFRESH_MS);
        this.load(false);
    }

    async load(announceIt) {
        try {
            const page = await api(`/v1/jobs?limit=${PAGE_SIZE}`);
            $('jobs-error').textContent = '';
            if (!this.loadedMore) {
                this.cursor = page.next_cursor;
            }
            this.show(page.jobs, false);
            if (announceIt) {
                announce(`${this.rows.size} job${this.rows.size === 1 ? '' : 's'} listed.`);
            }
        } catch (exc) {
            $('jobs-error').textContent = `The jobs could not be listed: ${exc.message}`;
        }
    }

    async loadMore() {
        try {
            const page = await api(`/v1/jobs?limit=${PAGE_SIZE}&cursor=${encodeURIComponent(this.cursor)}`);
            this.loadedMore = true;
            this.cursor = page.next_cursor;
            this.show(page.jobs, true);
        } catch (exc) {
            $('jobs-error').textContent = `Older jobs could not be listed: ${exc.message}`;
        }
    }

    show(jobs, older) {
        const body = $('jobs-body');
        const fresh = [];
        for (const job of jobs) {
            const row = this.rows.get(job.id);
            if (row) {
                row.update(job);
            } else {
                const created = new JobRow(job);
                this.rows.set(job.id, created);
                fresh.push(created.node);
                created.follow();
            }
        }
        if (older) {
            body.append(...fresh);
        } else {
            body.prepend(...fresh);
        }
        $('jobs-empty').hidden = this.rows.size > 0;
        $('jobs-table').hidden = this.rows.size === 0;
        $('more-row').hidden = !this.cursor;
    }
}

requireKey(() => new JobsPage());
