// The bundle's entry: `SpaceportViewer.mountViewer(element, config)` (see viewer.js for config).
export { mountViewer } from './viewer.js';
