// A job's splat in the viewer (spaceport.viewer's bundle), opened at the job's first training camera. The splat
// and the camera are fetched with a link token: the viewer loads them by URL and cannot send the key.
import { api, linkToken, requireKey, withToken } from './common.js';

const $ = (id) => document.getElementById(id);

function jobIdFromPath() {
    const match = window.location.pathname.match(/^\/jobs\/([^/]+)\/view/);
    return match ? decodeURIComponent(match[1]) : '';
}

async function showJob(jobId) {
    document.title = `Job ${jobId} viewer · Spaceport`;
    let job;
    let token;
    try {
        job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
        token = await linkToken(jobId);
    } catch (exc) {
        $('view-error').textContent = `Job ${jobId} could not be opened: ${exc.message}`;
        return;
    }
    const scene = ['scene.sog', 'splat.ply'].map((name) => job.artifacts.find((item) => item.name === name))
        .find(Boolean);
    if (!scene) {
        $('view-error').textContent = `Job ${jobId} has no splat to show yet (it is ${job.state}, steps ${job.steps}): `
            + 'the viewer needs its scene.sog or splat.ply.';
        return;
    }
    window.SpaceportViewer.mountViewer($('viewer'), {
        source: { url: withToken(new URL(scene.url).pathname, token), format: scene.name.split('.').pop() },
        camerasUrl: withToken(`/v1/jobs/${encodeURIComponent(jobId)}/camera`, token),
        title: `Job ${jobId} · ${scene.name}`
    });
}

requireKey(() => showJob(jobIdFromPath()));
