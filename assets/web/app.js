// The map page: each photo picked or dropped is sent to POST /v1/geolocate; its answer is shown
// as bars (countries, regions, cities or geocells) and on the map (the guess, the candidates
// sized by probability, the radius holding half the probability). Plain browser JavaScript, no
// build step; Leaflet and the outlines come from this server.
'use strict';

const map = L.map('map', { worldCopyJump: true, minZoom: 1 }).setView([25, 10], 2);
map.createPane('outlines').style.zIndex = 350; // under the markers' overlay pane (400)
const tiles = document.querySelector('meta[name="streetclip-tiles"]').content;
if (tiles) {
  L.tileLayer(tiles, { maxZoom: 18, attribution: 'tiles: ' + new URL(tiles).host }).addTo(map);
}
// A ring that crosses the antimeridian (Russia, Fiji) would be drawn with an edge across the
// whole map: its longitudes are made continuous instead (past 180 where it crosses).
function unwrap(ring) {
  let shift = 0;
  return ring.map(([lon, lat], i) => {
    if (i > 0) {
      const step = lon - ring[i - 1][0];
      if (step > 180) shift -= 360;
      if (step < -180) shift += 360;
    }
    return [lon + shift, lat];
  });
}

function unwrapped(geometry) {
  if (geometry.type === 'Polygon') geometry.coordinates = geometry.coordinates.map(unwrap);
  if (geometry.type === 'MultiPolygon') geometry.coordinates = geometry.coordinates.map((p) => p.map(unwrap));
  return geometry;
}

fetch('/vendor/countries-110m.json')
  .then((r) => r.json())
  .then((world) => {
    const countries = topojson.feature(world, world.objects.countries);
    countries.features.forEach((f) => f.geometry && unwrapped(f.geometry));
    L.geoJSON(countries, {
      pane: 'outlines',
      interactive: false,
      style: { color: '#7d8f9c', weight: 0.7, fillColor: '#f6f3ec', fillOpacity: tiles ? 0.2 : 1 },
    }).addTo(map);
    document.body.dataset.outlines = countries.features.length;
  });

fetch('/v1/model')
  .then((r) => r.json())
  .then((m) => {
    const a = m.architecture;
    const how = m.geocells ? `geocells (${m.geocells} cells)` : m.geolocation;
    document.getElementById('model').textContent =
      `${how} · ViT ${a.vision_layers} layers, ${a.image_size} px, patch ${a.patch_size} · ${m.device}`;
  });

const percent = (p) => (100 * p).toFixed(p >= 0.1 ? 0 : 1) + '%';

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  children.forEach((c) => node.append(c));
  return node;
}

function stage(title, cls, ranked) {
  const box = el('div', { class: 'stage ' + cls }, el('h3', {}, title));
  ranked.forEach((r) => {
    const fill = el('div', { class: 'fill', style: `width:${(100 * r.probability).toFixed(1)}%` });
    box.append(el('div', { class: 'bar' },
      el('span', { class: 'label', title: r.label }, r.label),
      el('span', { class: 'track' }, fill),
      el('span', { class: 'pct' }, percent(r.probability))));
  });
  return box;
}

function drawOnMap(name, guess) {
  const layer = L.layerGroup().addTo(map);
  const points = [[guess.lat, guess.lon]];
  const radius = guess.confidence && guess.confidence.radius_km;
  if (radius) {
    L.circle([guess.lat, guess.lon], {
      radius: radius * 1000, className: 'confidence', color: '#c33', weight: 1.5,
      dashArray: '5 5', fill: false, interactive: false,
    }).addTo(layer);
  }
  const candidates = guess.top_cells && guess.top_cells.length ? guess.top_cells : guess.top_cities;
  candidates.filter((c) => c.lat !== undefined).forEach((c) => {
    points.push([c.lat, c.lon]);
    L.circleMarker([c.lat, c.lon], {
      radius: 4 + 18 * Math.sqrt(c.probability), className: 'candidate', color: '#2f6f93',
      weight: 1, fillColor: '#3b7ea1', fillOpacity: 0.15 + 0.6 * c.probability,
    }).bindTooltip(`${c.label}: ${percent(c.probability)}`).addTo(layer);
  });
  L.circleMarker([guess.lat, guess.lon], {
    radius: 7, className: 'guess-marker', color: '#fff', weight: 2, fillColor: '#d22', fillOpacity: 1,
  }).bindTooltip(`${name}: ${place(guess)}`).addTo(layer);
  return { layer, bounds: L.latLngBounds(points) };
}

function place(guess) {
  return [guess.city, guess.region, guess.country].filter(Boolean).join(', ');
}

function show(card, name, guess) {
  card.dataset.topCountry = guess.top_countries[0].label;
  const where = `${guess.lat.toFixed(4)}, ${guess.lon.toFixed(4)}`;
  const radius = guess.confidence && guess.confidence.radius_km;
  const spread = radius === null || radius === undefined ? ''
    : ` · half the probability within ${Math.round(radius).toLocaleString()} km`;
  card.append(el('div', { class: 'place' }, place(guess)), el('div', { class: 'where' }, where + spread));
  if (guess.note) card.append(el('div', { class: 'where' }, guess.note));
  card.append(stage('Countries', 'countries', guess.top_countries));
  if (guess.top_regions.length) card.append(stage('Regions', 'regions', guess.top_regions));
  if (guess.top_cells && guess.top_cells.length) card.append(stage('Cells', 'cells', guess.top_cells));
  else if (guess.top_cities.length) card.append(stage('Cities', 'cities', guess.top_cities));
  const drawn = drawOnMap(name, guess);
  const focus = () => {
    document.querySelectorAll('.result.chosen').forEach((c) => c.classList.remove('chosen'));
    card.classList.add('chosen');
    map.fitBounds(drawn.bounds.pad(0.6), { maxZoom: 6 });
  };
  card.addEventListener('click', focus);
  focus();
}

async function locate(file) {
  const card = el('div', { class: 'result' }, el('img', { src: URL.createObjectURL(file), alt: file.name }));
  const status = el('div', { class: 'where' }, `locating ${file.name}…`);
  card.append(status);
  document.getElementById('results').prepend(card);
  try {
    const response = await fetch('/v1/geolocate?name=' + encodeURIComponent(file.name), { method: 'POST', body: file });
    const answer = await response.json();
    status.remove();
    if (!response.ok) throw new Error(answer.error.message);
    show(card, file.name, answer[0].guess);
    card.classList.add('done');
  } catch (e) {
    status.remove();
    card.append(el('div', { class: 'error' }, String(e.message || e)));
    card.classList.add('failed');
  }
}

const input = document.getElementById('photos');
input.addEventListener('change', () => Array.from(input.files).forEach(locate));
const drop = document.getElementById('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  Array.from(e.dataTransfer.files).forEach(locate);
});
