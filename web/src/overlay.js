// The viewer's page furniture around the canvas: title, splat count, reset button, help, loading bar,
// error message. Plain DOM with labels and roles so it works from the keyboard and with screen readers.

const STYLE_ID = 'spaceport-viewer-style';

const CSS = `
.spv { position: relative; width: 100%; height: 100%; overflow: hidden; background: #121217;
       font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #eceff4; }
.spv canvas { display: block; width: 100%; height: 100%; outline: none; touch-action: none; }
.spv canvas:focus-visible { box-shadow: inset 0 0 0 3px #5e9bff; }
.spv-panel { position: absolute; top: 12px; left: 12px; max-width: min(360px, calc(100% - 24px));
             padding: 10px 12px; border-radius: 8px; background: rgba(18, 18, 23, 0.78); }
.spv-title { margin: 0 0 2px; font-size: 15px; font-weight: 600; overflow-wrap: anywhere; }
.spv-count { margin: 0 0 8px; color: #b8c0cc; }
.spv-button { font: inherit; color: #fff; background: #2f5fd0; border: 0; border-radius: 6px;
              padding: 6px 12px; cursor: pointer; }
.spv-button:hover { background: #3b6fe6; }
.spv-button:focus-visible { outline: 3px solid #9cc2ff; outline-offset: 2px; }
.spv-controls { margin-top: 8px; color: #b8c0cc; font-size: 12px; }
.spv-controls summary { cursor: pointer; }
.spv-controls summary:focus-visible { outline: 3px solid #9cc2ff; outline-offset: 2px; }
.spv-help { margin: 4px 0 0; padding: 0; list-style: none; }
.spv-help kbd { font: 11px ui-monospace, monospace; padding: 0 4px; border: 1px solid #56607080;
                border-radius: 3px; }
.spv-loading { position: absolute; left: 50%; top: 50%; width: min(320px, 70%); transform: translate(-50%, -50%);
               text-align: center; }
.spv-bar { height: 8px; margin-top: 6px; border-radius: 4px; background: #2a2d36; overflow: hidden; }
.spv-bar-fill { height: 100%; width: 0; background: #5e9bff; transition: width 0.1s linear; }
.spv-error { position: absolute; left: 12px; right: 12px; bottom: 12px; padding: 10px 12px; border-radius: 8px;
             background: #5c1d24; color: #fff; }
.spv [hidden] { display: none !important; }
`;

function element(tag, attributes = {}, text = null) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
        node.setAttribute(name, value);
    }
    if (text !== null) {
        node.textContent = text;
    }
    return node;
}

function injectStyle() {
    if (!document.getElementById(STYLE_ID)) {
        const style = element('style', { id: STYLE_ID }, CSS);
        document.head.appendChild(style);
    }
}

const HELP = [
    ['Drag', 'orbit'],
    ['Shift + drag, middle drag', 'pan'],
    ['Wheel', 'zoom'],
    ['W A S D, arrows, Q E', 'fly'],
    ['R', 'reset view']
];

/**
 * Builds the viewer's DOM inside `container` and returns handles to update it.
 *
 * @param {HTMLElement} container - The element to fill.
 * @param {{title: string, onReset: Function}} options - Title and reset callback.
 * @returns {object} root, canvas, setProgress(received, total), setSplatCount(n), showError(message), done().
 */
export function buildOverlay(container, { title, onReset }) {
    injectStyle();
    const root = element('div', { class: 'spv' });
    const canvas = element('canvas', {
        class: 'spv-canvas',
        tabindex: '0',
        role: 'img',
        'aria-label': `3D view of ${title}: drag to orbit, shift-drag to pan, wheel to zoom, W A S D to fly`
    });

    const panel = element('section', { class: 'spv-panel', 'aria-label': 'Viewer controls' });
    const heading = element('h1', { class: 'spv-title' }, title);
    const count = element('p', { class: 'spv-count', 'data-testid': 'splat-count', 'aria-live': 'polite' },
        'loading…');
    const reset = element('button', { class: 'spv-button', type: 'button', 'data-testid': 'reset-view',
        title: 'Back to the first view (R)' }, 'Reset view');
    reset.addEventListener('click', () => onReset());
    // the key list folds away (a native <details>, keyboard-operable) where it would hide the splat
    const controls = element('details', { class: 'spv-controls' });
    controls.open = container.clientWidth >= 640;
    const help = element('ul', { class: 'spv-help' });
    for (const [keys, action] of HELP) {
        const item = element('li');
        item.append(element('kbd', {}, keys), ` ${action}`);
        help.append(item);
    }
    controls.append(element('summary', {}, 'Controls'), help);
    panel.append(heading, count, reset, controls);

    const loading = element('div', { class: 'spv-loading' });
    const label = element('div', { id: 'spv-loading-label' }, 'Loading splat…');
    const bar = element('div', {
        class: 'spv-bar', role: 'progressbar', 'aria-labelledby': 'spv-loading-label',
        'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0', 'data-testid': 'progress'
    });
    const fill = element('div', { class: 'spv-bar-fill' });
    bar.append(fill);
    loading.append(label, bar);

    const error = element('div', { class: 'spv-error', role: 'alert', hidden: '' });
    root.append(canvas, panel, loading, error);
    container.append(root);

    window.addEventListener('keydown', (event) => {
        const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
        if (!typing && (event.key === 'r' || event.key === 'R') && !event.ctrlKey && !event.metaKey) {
            onReset();
        }
    });

    return {
        root,
        canvas,
        setProgress(received, total) {
            const percent = total > 0 ? Math.min(100, Math.round((100 * received) / total)) : 0;
            bar.setAttribute('aria-valuenow', String(percent));
            fill.style.width = total > 0 ? `${percent}%` : '100%';
            label.textContent = total > 0 ? `Loading splat… ${percent} %` :
                `Loading splat… ${(received / 1e6).toFixed(1)} MB`;
        },
        setSplatCount(n) {
            count.textContent = `${n.toLocaleString('en-US')} splats`;
        },
        showError(message) {
            loading.hidden = true;
            count.textContent = 'not loaded';
            error.textContent = `Could not show the splat: ${message}`;
            error.hidden = false;
        },
        done() {
            loading.hidden = true;
        }
    };
}
