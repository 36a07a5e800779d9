// A job as the pages keep it: the API's JSON, moved forward by its server-sent events.
import { api, FINAL_STATES } from './common.js';

const VIEWABLE_STEPS = new Set(['full', 'train', 'compress']);

// Apply one event (EventOut) to ``job`` in place; true when it is the job's final state event.
export function applyEvent(job, event) {
    // the stream starts at the job's first event: what happened before the job was read is already in it, and
    // replaying it would move the bar back
    if (job.updated_at && Date.parse(event.time) < Date.parse(job.updated_at)) {
        return false;
    }
    const data = event.data ?? {};
    if (event.kind === 'progress') {
        if (typeof data.progress === 'number') {
            job.progress = data.progress;
        }
        job.eta_s = data.eta_s ?? null;
        job.etaReceivedAt = Date.now();
        job.stage = event.stage ?? job.stage;
        if (!FINAL_STATES.has(job.state)) {
            job.state = 'running';
        }
    } else if (event.kind === 'stage') {
        job.stage = event.stage ?? job.stage;
        if (data.state === 'running' && !FINAL_STATES.has(job.state)) {
            job.state = 'running';
            job.started_at = job.started_at ?? event.time;
        }
    } else if (event.kind === 'state' && data.state) {
        job.state = data.state;
        if (data.state === 'running') {
            job.started_at = job.started_at ?? event.time;
        }
        if (FINAL_STATES.has(data.state)) {
            job.finished_at = event.time;
            job.eta_s = null;
            job.error = data.error ?? null;
            if (data.state === 'succeeded') {
                job.progress = 1;
            }
            return true;
        }
    }
    return false;
}

// Seconds left by the job's last estimate, counted down since it arrived; null when there is none.
export function remainingSeconds(job) {
    if (FINAL_STATES.has(job.state) || job.eta_s === null || job.eta_s === undefined) {
        return null;
    }
    const since = job.etaReceivedAt ? (Date.now() - job.etaReceivedAt) / 1000 : 0;
    return Math.max(0, job.eta_s - since);
}

export function hasViewer(job) {
    return job.state === 'succeeded' && VIEWABLE_STEPS.has(job.steps);
}

export function cancelJob(jobId) {
    return api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: 'POST' });
}
