// The upload page: choose the input, the steps and options; upload as multipart to POST /v1/jobs with a
// progress bar. Obvious mistakes (file types, steps that do not fit the input) are caught before uploading;
// everything else is the server's to check, and its message is shown as it is.
import { apiKey, element, errorDetail, formatBytes, meter, requireKey, STEP_LABELS } from './common.js';

const IMAGE_EXTENSIONS = new Set(['jpg', 'jpeg', 'png', 'tif', 'tiff', 'webp', 'heic', 'heif']);
const VIDEO_EXTENSIONS = new Set(['mp4', 'mov', 'm4v', 'mkv', 'webm', 'avi']);
const COLMAP_NAMES = new Set(['cameras', 'images', 'points3D', 'rigs', 'frames']);
const COLMAP_REQUIRED = ['cameras', 'images', 'points3D'];
const TYPES_HELP = 'photos (JPEG, PNG, TIFF, WebP, HEIC), a .zip of photos, a video (MP4, MOV, MKV, AVI), '
    + 'a .ply, or a COLMAP project folder (images/ + sparse/0/)';
const STEPS_FOR_INPUT = { photos: ['full', 'sfm'], colmap: ['train'], ply: ['compress'] };
const INPUT_WORDS = { photos: 'photos', colmap: 'a COLMAP project', ply: 'a .ply' };
const SHOWN_FILES = 12;

const $ = (id) => document.getElementById(id);

// -- what was chosen -----------------------------------------------------------------------------------

function splitName(name) {
    const parts = name.split('/');
    const base = parts[parts.length - 1];
    const dot = base.lastIndexOf('.');
    return {
        folders: parts.slice(0, -1),
        base,
        stem: dot > 0 ? base.slice(0, dot) : base,
        extension: dot > 0 ? base.slice(dot + 1).toLowerCase() : ''
    };
}

// image | zip | video | ply | colmap, or null for a file the service does not take
function kindOf(name) {
    const { folders, stem, extension } = splitName(name);
    if (folders.includes('sparse') && COLMAP_NAMES.has(stem) && (extension === 'bin' || extension === 'txt')) {
        return 'colmap';
    }
    if (IMAGE_EXTENSIONS.has(extension)) {
        return 'image';
    }
    if (VIDEO_EXTENSIONS.has(extension)) {
        return 'video';
    }
    if (extension === 'zip' || extension === 'ply') {
        return extension;
    }
    return null;
}

// A Spaceport workspace keeps its model under sfm/sparse/0: upload it as sparse/0
function uploadName(name) {
    return name.startsWith('sfm/sparse/') ? name.slice('sfm/'.length) : name;
}

// {files: [{file, name, kind}], skipped: [names], refused: [names], input: photos|colmap|ply|mixed|null}
function makeSelection(entries, fromFolder) {
    const files = [];
    const skipped = [];
    const refused = [];
    for (const { file, name } of entries) {
        const { base } = splitName(name);
        if (base.startsWith('.')) {
            skipped.push(name); // .DS_Store and other hidden files
            continue;
        }
        const kind = kindOf(uploadName(name));
        if (kind === null) {
            (fromFolder ? skipped : refused).push(name);
            continue;
        }
        files.push({ file, name: uploadName(name), kind });
    }
    const colmap = files.some((item) => item.kind === 'colmap');
    if (colmap) {
        // a COLMAP project: only its photos under images/ and its model under sparse/ are uploaded
        const kept = files.filter((item) => item.name.startsWith('images/') && item.kind === 'image'
            || item.name.startsWith('sparse/') && item.kind === 'colmap');
        skipped.push(...files.filter((item) => !kept.includes(item)).map((item) => item.name));
        return { files: kept, skipped, refused, input: 'colmap' };
    }
    const kinds = new Set(files.map((item) => item.kind));
    let input = null;
    if (kinds.has('ply')) {
        input = kinds.size === 1 && files.length === 1 ? 'ply' : 'mixed';
    } else if (files.length) {
        input = 'photos';
    }
    return { files, skipped, refused, input };
}

// A message for what cannot be uploaded as chosen, or null.
function selectionProblem(selection) {
    if (selection.refused.length) {
        const names = selection.refused.slice(0, 5).join(', ') + (selection.refused.length > 5 ? ', …' : '');
        return `${names}: not a file Spaceport takes. Send ${TYPES_HELP}.`;
    }
    if (!selection.files.length) {
        return selection.skipped.length
            ? `Nothing here Spaceport can use (skipped: ${selection.skipped.slice(0, 5).join(', ')}). Send ${TYPES_HELP}.`
            : `Choose the input first: ${TYPES_HELP}.`;
    }
    if (selection.input === 'mixed') {
        return 'A .ply is compressed on its own (Compression only): upload it without other files.';
    }
    if (selection.input === 'colmap') {
        if (!selection.files.some((item) => item.kind === 'image')) {
            return 'The COLMAP project has no photos under images/: choose the folder that holds images/ and sparse/0/.';
        }
        const models = new Map();
        for (const item of selection.files.filter((entry) => entry.kind === 'colmap')) {
            const { folders, stem } = splitName(item.name);
            const folder = folders.join('/');
            models.set(folder, (models.get(folder) ?? new Set()).add(stem));
        }
        const complete = [...models.values()].some((stems) => COLMAP_REQUIRED.every((name) => stems.has(name)));
        if (!complete) {
            return 'The COLMAP model is incomplete: sparse/0/ needs cameras, images and points3D (.bin or .txt).';
        }
    }
    return null;
}

function stepsProblem(selection, steps) {
    const allowed = STEPS_FOR_INPUT[selection.input];
    if (!allowed || allowed.includes(steps)) {
        return null;
    }
    const wanted = allowed.map((value) => STEP_LABELS[value]).join(' or ');
    const needs = {
        full: 'photos, a zip or a video', sfm: 'photos, a zip or a video',
        train: 'a COLMAP project folder (images/ + sparse/0/)', compress: 'one .ply'
    }[steps];
    return `${STEP_LABELS[steps]} takes ${needs}: for ${INPUT_WORDS[selection.input]}, choose ${wanted}.`;
}

// -- reading a selection from the pickers and from a drop ----------------------------------------------

function fromFileInput(input) {
    return [...input.files].map((file) => {
        const relative = file.webkitRelativePath || file.name;
        // a folder pick names files "<folder>/...": the chosen folder itself is not part of the upload
        return { file, name: file.webkitRelativePath ? relative.split('/').slice(1).join('/') : relative };
    });
}

function readEntries(reader) {
    return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walkEntry(entry, found) {
    if (entry.isFile) {
        const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
        found.push({ file, name: entry.fullPath.replace(/^\/+/, '') });
        return;
    }
    const reader = entry.createReader();
    for (let batch = await readEntries(reader); batch.length; batch = await readEntries(reader)) {
        for (const child of batch) {
            await walkEntry(child, found);
        }
    }
}

async function fromDrop(dataTransfer) {
    const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
    if (!entries.length) {
        return { entries: [...dataTransfer.files].map((file) => ({ file, name: file.name })), fromFolder: false };
    }
    const found = [];
    for (const entry of entries) {
        await walkEntry(entry, found);
    }
    const folders = entries.filter((entry) => entry.isDirectory);
    if (folders.length === 1 && entries.length === 1) {
        const prefix = `${folders[0].name}/`;
        found.forEach((item) => { item.name = item.name.slice(prefix.length); });
    }
    return { entries: found, fromFolder: folders.length > 0 };
}

// -- the page ------------------------------------------------------------------------------------------

function parseSettings(text) {
    const settings = {};
    text.split('\n').forEach((raw, index) => {
        const line = raw.trim();
        if (!line || line.startsWith('#')) {
            return;
        }
        const equals = line.indexOf('=');
        if (equals <= 0) {
            throw new Error(`Stage settings, line ${index + 1} ("${line}"): write STAGE.FIELD=VALUE, like train.steps=3000.`);
        }
        const name = line.slice(0, equals).trim();
        const value = line.slice(equals + 1).trim();
        try {
            settings[name] = JSON.parse(value);
        } catch {
            settings[name] = value; // a bare word: a string setting
        }
    });
    return settings;
}

class UploadPage {
    constructor() {
        this.selection = makeSelection([], false);
        this.request = null;
        this.progress = meter('Upload progress');
        $('upload-progress').append(this.progress.node);
        this.cancelButton = element('button', { type: 'button', className: 'button small' }, 'Cancel upload');
        this.cancelButton.addEventListener('click', () => this.request?.abort());
        $('upload-progress').append(this.cancelButton);
        this.bind();
    }

    bind() {
        for (const id of ['pick-files', 'pick-folder']) {
            $(id).addEventListener('change', (event) => {
                this.choose(fromFileInput(event.target), id === 'pick-folder');
                event.target.value = ''; // choosing the same files again still fires change
            });
        }
        $('clear-selection').addEventListener('click', () => {
            this.choose([], false);
            $('pick-files').focus();
        });
        const zone = $('dropzone');
        zone.addEventListener('dragover', (event) => {
            event.preventDefault();
            zone.classList.add('dragging');
        });
        zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
        zone.addEventListener('drop', async (event) => {
            event.preventDefault();
            zone.classList.remove('dragging');
            const { entries, fromFolder } = await fromDrop(event.dataTransfer);
            this.choose(entries, fromFolder);
        });
        document.querySelectorAll('input[name="steps"]').forEach((radio) => {
            radio.addEventListener('change', () => this.checkSteps());
        });
        $('preset').addEventListener('change', () => this.showReady());
        $('upload-form').addEventListener('submit', (event) => {
            event.preventDefault();
            this.submit();
        });
    }

    get steps() {
        return document.querySelector('input[name="steps"]:checked').value;
    }

    choose(entries, fromFolder) {
        this.selection = makeSelection(entries, fromFolder);
        $('submit-error').textContent = '';
        $('submit-done').textContent = '';
        this.showSelection();
        $('files-error').textContent = entries.length ? selectionProblem(this.selection) ?? '' : '';
        // the input decides the steps when only some fit: switch to one that does, and say so
        const allowed = STEPS_FOR_INPUT[this.selection.input];
        if (allowed && !allowed.includes(this.steps)) {
            $(`steps-${allowed[0]}`).checked = true;
            $('steps-note').textContent = `Steps set to ${STEP_LABELS[allowed[0]]}: you chose ${INPUT_WORDS[this.selection.input]}.`;
        } else {
            $('steps-note').textContent = '';
        }
        this.showReady();
    }

    showSelection() {
        const { files, skipped } = this.selection;
        $('selection').hidden = files.length === 0 && skipped.length === 0;
        const bytes = files.reduce((sum, item) => sum + item.file.size, 0);
        const counts = {};
        files.forEach((item) => { counts[item.kind] = (counts[item.kind] ?? 0) + 1; });
        const words = Object.entries(counts).map(([kind, count]) => {
            const noun = { image: 'photo', zip: 'zip', video: 'video', ply: 'PLY', colmap: 'model file' }[kind];
            return `${count} ${noun}${count === 1 ? '' : 's'}`;
        });
        let summary = `${words.join(', ') || 'No usable files'} · ${formatBytes(bytes)}`;
        if (skipped.length) {
            summary += ` · ${skipped.length} skipped (${skipped.slice(0, 3).join(', ')}${skipped.length > 3 ? ', …' : ''})`;
        }
        $('selection-summary').textContent = summary;
        const list = $('file-list');
        list.replaceChildren(...files.slice(0, SHOWN_FILES).map((item) => element('li', { title: item.name }, item.name)));
        if (files.length > SHOWN_FILES) {
            list.append(element('li', {}, `and ${files.length - SHOWN_FILES} more`));
        }
    }

    showReady() {
        const { files } = this.selection;
        const ready = $('ready-summary');
        if (!files.length) {
            ready.textContent = 'Choose the input to start.';
            return;
        }
        const bytes = files.reduce((sum, item) => sum + item.file.size, 0);
        ready.replaceChildren(element('strong', {}, `${files.length} file${files.length === 1 ? '' : 's'}, ${formatBytes(bytes)}`),
            ` · ${STEP_LABELS[this.steps]} · preset ${$('preset').value}`);
    }

    checkSteps() {
        this.showReady();
        $('steps-note').textContent = '';
        $('submit-error').textContent = stepsProblem(this.selection, this.steps) ?? '';
    }

    // The job's JSON, or throws an Error whose message says what to fix.
    jobSpec() {
        const problem = selectionProblem(this.selection) ?? stepsProblem(this.selection, this.steps);
        if (problem) {
            throw new Error(problem);
        }
        const job = { steps: this.steps, preset: $('preset').value, settings: parseSettings($('settings').value) };
        const email = $('email');
        if (email.value.trim()) {
            if (!email.checkValidity()) {
                email.focus();
                throw new Error(`E-mail: "${email.value}" is not an e-mail address (name@example.org).`);
            }
            job.notify = { email: email.value.trim() };
        }
        return job;
    }

    submit() {
        if (this.request) {
            return;
        }
        $('submit-error').textContent = '';
        $('submit-done').textContent = '';
        let job;
        try {
            job = this.jobSpec();
        } catch (exc) {
            $('submit-error').textContent = exc.message;
            return;
        }
        const form = new FormData();
        form.append('job', JSON.stringify(job)); // first: the server reads the job before the files
        for (const item of this.selection.files) {
            form.append('files', item.file, item.name); // the name keeps folders (images/…, sparse/0/…)
        }
        this.send(form);
    }

    send(form) {
        const request = new XMLHttpRequest();
        this.request = request;
        this.setBusy(true);
        const total = this.selection.files.reduce((sum, item) => sum + item.file.size, 0);
        this.progress.set(0);
        $('upload-status').textContent = `Uploading ${formatBytes(total)}…`;
        request.upload.onprogress = (event) => {
            if (event.lengthComputable) {
                this.progress.set(event.loaded / event.total);
                const percent = Math.floor((event.loaded / event.total) * 100);
                $('upload-status').textContent = `Uploading: ${formatBytes(event.loaded)} of ${formatBytes(event.total)} (${percent} %)`;
            }
        };
        request.upload.onload = () => {
            this.progress.set(1);
            $('upload-status').textContent = 'Upload complete. The server is checking the files…';
        };
        request.onload = () => this.finished(request);
        request.onerror = () => this.failed('The upload did not reach the server (the connection was lost). Check the server and try again.');
        request.onabort = () => this.failed('Upload cancelled: no job was created.');
        request.open('POST', '/v1/jobs');
        request.setRequestHeader('Authorization', `Bearer ${apiKey()}`);
        request.setRequestHeader('Accept', 'application/json');
        request.send(form);
    }

    async finished(request) {
        const response = new Response(request.responseText, { status: request.status });
        if (request.status !== 201) {
            const detail = await errorDetail(response);
            this.failed(request.status === 401
                ? `The server refused the key: ${detail}. Use "Forget key" and enter a valid one.`
                : `The server refused the job (${request.status}): ${detail}`);
            return;
        }
        const job = await response.json();
        this.request = null;
        this.setBusy(false);
        $('upload-status').textContent = `Uploaded ${this.selection.files.length} file(s).`;
        this.choose([], false);
        const done = $('submit-done');
        done.replaceChildren(
            element('strong', {}, `Job ${job.id} is ${job.state}.`), ' ',
            element('a', { href: `/jobs/${encodeURIComponent(job.id)}` }, 'Follow it'), ' or see ',
            element('a', { href: '/jobs' }, 'all jobs'), '.');
        done.querySelector('a').focus();
    }

    failed(message) {
        this.request = null;
        this.setBusy(false);
        $('upload-progress').hidden = true;
        $('upload-status').textContent = '';
        $('submit-error').textContent = message;
    }

    setBusy(busy) {
        $('submit').disabled = busy;
        this.cancelButton.hidden = !busy;
        if (busy) {
            $('upload-progress').hidden = false;
        }
        for (const id of ['pick-files', 'pick-folder', 'clear-selection']) {
            $(id).disabled = busy;
        }
    }
}

requireKey(() => new UploadPage());
