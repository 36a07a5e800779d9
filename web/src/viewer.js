// Spaceport's splat viewer: one PlayCanvas application in a container element.
//
// mountViewer(container, config) is the only entry. config:
//   source:  {url: "scene.sog"} | {base64: "...", format: "sog" | "ply"}   (format defaults to the URL's extension)
//   camera:  the first view, or null to frame the whole splat. Either inline, or camerasUrl: "cameras.json"
//            (a JSON object {"camera": {...} | null}). A camera (see spaceport/viewer/camera.py) is
//            {name, position: [x,y,z], target: [x,y,z], fov (vertical, degrees), scene_rotation: [x,y,z,w]}:
//            position and target are in the viewer's world, where +Y is up and the splat is turned by
//            scene_rotation (a quaternion from the splat's own COLMAP frame, y down, to the viewer's).
//   title:   shown in the panel (defaults to the file name).
//   background: [r, g, b] in 0..1.
//
// For tests and embedding pages the returned object (also window.spaceportViewer for the first viewer) has:
//   ready (true once the splat is loaded and sorted frames were drawn from a still camera), readyFrames,
//   splatCount, error, resetView(), setCamera(camera), cameraPose().
import {
    AppBase,
    AppOptions,
    Asset,
    CameraComponentSystem,
    Color,
    createGraphicsDevice,
    DEVICETYPE_WEBGL2,
    Entity,
    FILLMODE_NONE,
    GSplatComponentSystem,
    GSplatHandler,
    Mat4,
    Quat,
    RESOLUTION_AUTO,
    ScriptComponentSystem,
    TextureHandler,
    Vec3
} from 'playcanvas';
import { CameraControls } from 'playcanvas/scripts/esm/camera-controls.mjs';

import { buildOverlay } from './overlay.js';

const READY_AFTER_FRAMES = 3;
const DEFAULT_BACKGROUND = [0.07, 0.07, 0.09];
// the splat's turn when no camera says otherwise: COLMAP-made splats have y down, so turn them 180 degrees
// about X to stand them upright (as spaceport/viewer/camera.py does)
const FLIP_X = [1, 0, 0, 0];

function base64ToBytes(base64) {
    const binary = atob(base64);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) {
        bytes[i] = binary.charCodeAt(i);
    }
    return bytes;
}

function formatOf(source) {
    if (source.format) {
        return source.format;
    }
    const clean = source.url.split(/[?#]/)[0];
    return clean.slice(clean.lastIndexOf('.') + 1).toLowerCase();
}

async function loadCamera(config) {
    if (config.camera !== undefined) {
        return config.camera;
    }
    if (!config.camerasUrl) {
        return null;
    }
    const response = await fetch(config.camerasUrl);
    if (!response.ok) {
        throw new Error(`${config.camerasUrl}: ${response.status} ${response.statusText}`);
    }
    return (await response.json()).camera ?? null;
}

function splatAsset(source) {
    const format = formatOf(source);
    if (format !== 'sog' && format !== 'ply') {
        throw new Error(`cannot show a .${format} file: the viewer reads .sog and .ply`);
    }
    if (source.base64 !== undefined) {
        // the handler picks its parser by the file name's extension; the bytes come from `contents`
        const contents = new Response(base64ToBytes(source.base64));
        return new Asset('splat', 'gsplat', { url: `inline.${format}`, filename: `inline.${format}`, contents });
    }
    return new Asset('splat', 'gsplat', { url: source.url, filename: `scene.${format}` });
}

async function createApp(canvas) {
    const device = await createGraphicsDevice(canvas, {
        deviceTypes: [DEVICETYPE_WEBGL2],
        antialias: false // splats gain nothing from MSAA and it costs fill rate
    });
    device.maxPixelRatio = Math.min(window.devicePixelRatio, 2);
    const options = new AppOptions();
    options.graphicsDevice = device;
    // no app-level mouse/keyboard: CameraControls reads its own input sources
    options.componentSystems = [CameraComponentSystem, ScriptComponentSystem, GSplatComponentSystem];
    options.resourceHandlers = [TextureHandler, GSplatHandler];
    const app = new AppBase(canvas);
    app.init(options);
    app.setCanvasFillMode(FILLMODE_NONE);
    app.setCanvasResolution(RESOLUTION_AUTO);
    return app;
}

function loadAsset(app, asset, onProgress) {
    return new Promise((resolve, reject) => {
        asset.on('progress', (received, total) => onProgress(received, total));
        asset.once('load', () => resolve(asset));
        asset.once('error', (err) => reject(new Error(String(err))));
        app.assets.add(asset);
        app.assets.load(asset);
    });
}

// A camera that frames the splat's bounds from the front, for files without a training camera.
function framingCamera(splatEntity) {
    const aabb = splatEntity.gsplat.customAabb;
    const world = new Mat4().setTRS(Vec3.ZERO, splatEntity.getRotation(), Vec3.ONE);
    const center = world.transformPoint(aabb.center, new Vec3());
    const radius = Math.max(aabb.halfExtents.length(), 1e-3);
    const fov = 50;
    const distance = radius / Math.tan((fov / 2) * Math.PI / 180);
    return {
        name: null,
        position: [center.x, center.y, center.z + distance],
        target: [center.x, center.y, center.z],
        fov
    };
}

// The controls ease the camera towards its goal in ever smaller steps; a change under a millionth (of the
// rotation's entries, or relative to the position) since the last drawn frame does not move a pixel.
function nearlyEqual(a, b, tolerance = 1e-6) {
    for (let i = 0; i < 16; i++) {
        if (Math.abs(a.data[i] - b.data[i]) > tolerance * (i >= 12 ? 1 + Math.abs(b.data[i]) : 1)) {
            return false;
        }
    }
    return true;
}

class Viewer {
    constructor(container, config) {
        this.container = container;
        this.config = config;
        this.ready = false;
        this.readyFrames = 0;
        this.splatCount = null;
        this.error = null;
        this.camera = null; // the first view, restored by resetView()
        this._lastCameraMatrix = new Mat4();
    }

    async start() {
        const { config } = this;
        this.overlay = buildOverlay(this.container, {
            title: config.title ?? (config.source.url ?? 'scene').split('/').pop(),
            onReset: () => this.resetView()
        });
        try {
            await this._start();
        } catch (err) {
            this.error = String(err.message ?? err);
            this.overlay.showError(this.error);
            console.error(err);
        }
        return this;
    }

    async _start() {
        const { config, overlay } = this;
        const canvas = overlay.canvas;
        const camera = await loadCamera(config);
        const app = await createApp(canvas);
        this.app = app;
        // the canvas follows its container (resizeCanvas sets the canvas' own size in px)
        const resize = () => {
            app.resizeCanvas(overlay.root.clientWidth, overlay.root.clientHeight);
            if (this.cameraEntity) {
                this._markMoved();
            }
        };
        new ResizeObserver(resize).observe(overlay.root);
        resize();
        app.start();

        const asset = splatAsset(config.source);
        await loadAsset(app, asset, (received, total) => overlay.setProgress(received, total));
        overlay.setProgress(1, 1);

        const splat = new Entity('splat');
        splat.addComponent('gsplat', { asset });
        const rotation = camera?.scene_rotation ?? FLIP_X;
        splat.setRotation(new Quat(rotation[0], rotation[1], rotation[2], rotation[3]));
        app.root.addChild(splat);
        this.splatCount = asset.resource.numSplats;
        overlay.setSplatCount(this.splatCount);

        this.camera = camera ?? framingCamera(splat);
        this._addCamera(config.background ?? DEFAULT_BACKGROUND);
        this._watchFrames();
        overlay.done();
    }

    _addCamera(background) {
        const { app, camera } = this;
        const entity = new Entity('camera');
        entity.addComponent('camera', {
            clearColor: new Color(background[0], background[1], background[2]),
            fov: camera.fov,
            nearClip: 0.01 * this._distance(camera),
            farClip: 1000 * this._distance(camera)
        });
        entity.setPosition(...camera.position);
        app.root.addChild(entity);
        entity.addComponent('script');
        this.cameraEntity = entity;
        // created with the camera already in place, then aimed without smoothing: the first frame is
        // exactly the given view
        this.controls = entity.script.create(CameraControls);
        this._applyCamera(camera);
    }

    _distance(camera) {
        const [px, py, pz] = camera.position;
        const [tx, ty, tz] = camera.target;
        return Math.max(Math.hypot(tx - px, ty - py, tz - pz), 1e-6);
    }

    _applyCamera(camera) {
        const distance = this._distance(camera);
        this.cameraEntity.camera.fov = camera.fov;
        this.cameraEntity.setPosition(...camera.position);
        // fly speed in scene units per second, from the distance to what the camera looks at
        this.controls.moveSpeed = distance * 0.5;
        this.controls.moveFastSpeed = distance * 1.5;
        this.controls.moveSlowSpeed = distance * 0.15;
        this.controls.focusPoint = new Vec3(...camera.target);
        this._markMoved();
    }

    _markMoved() {
        this.ready = false;
        this.readyFrames = 0;
        this.app.renderNextFrame = true;
    }

    // Renders on demand (the camera moved, or the splat's sort produced a new order) so an idle viewer
    // costs nothing, and counts the frames drawn from a still camera with the latest sort.
    _watchFrames() {
        const { app } = this;
        app.autoRender = false;
        app.on('update', () => {
            const matrix = this.cameraEntity.getWorldTransform();
            if (!nearlyEqual(matrix, this._lastCameraMatrix)) {
                this._lastCameraMatrix.copy(matrix);
                this._markMoved();
            }
            // asked here, before the frame: the engine clears renderNextFrame after rendering
            if (!this.ready) {
                app.renderNextFrame = true;
            }
        });
        app.systems.gsplat.on('frame:request', () => {
            app.renderNextFrame = true;
        });
        app.systems.gsplat.on('frame:ready', (camera, layer, sorted, loadingCount) => {
            if (sorted && !loadingCount) {
                this.readyFrames += 1;
                this.ready = this.readyFrames >= READY_AFTER_FRAMES;
            } else {
                this.readyFrames = 0;
                this.ready = false;
            }
        });
        this._markMoved();
    }

    resetView() {
        if (this.camera && this.controls) {
            this._applyCamera(this.camera);
        }
    }

    setCamera(camera) {
        this._applyCamera({ ...this.camera, ...camera });
    }

    cameraPose() {
        const entity = this.cameraEntity;
        if (!entity) {
            return null;
        }
        const p = entity.getPosition();
        const f = entity.forward;
        const u = entity.up;
        return { position: [p.x, p.y, p.z], forward: [f.x, f.y, f.z], up: [u.x, u.y, u.z], fov: entity.camera.fov };
    }
}

/**
 * Shows a splat in `container` (an element the viewer fills). Returns the Viewer once the splat is
 * shown (or has failed: see `viewer.error`).
 *
 * @param {HTMLElement} container - The element to fill.
 * @param {object} config - See the top of this file.
 * @returns {Promise<Viewer>} The viewer.
 */
export function mountViewer(container, config) {
    const viewer = new Viewer(container, config);
    if (!window.spaceportViewer) {
        window.spaceportViewer = viewer;
    }
    return viewer.start();
}
