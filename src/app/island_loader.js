((js, wasm) => {
  if (location.pathname.endsWith('/claim')) history.replaceState(null, '', location.pathname.slice(0, -6));
  const compiled = WebAssembly.compileStreaming(fetch(wasm));
  const glue = import(js);
  const parsed = new Promise((resolve) =>
    document.readyState === 'loading'
      ? document.addEventListener('DOMContentLoaded', resolve, { once: true })
      : resolve(),
  );
  const children = [];
  async function island(el, mod) {
    const run = mod[el.dataset.component];
    if (!run) return console.warn(`Could not find WASM function for the island ${el.dataset.component}.`);
    const onChildren = children[children.length - 1];
    if (onChildren) onChildren();
    await run(el);
  }
  async function walk(node, mod) {
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    const tag = node.tagName.toLowerCase();
    if (tag === 'leptos-island') await island(node, mod);
    if (tag === 'leptos-children') children.push(node.$$on_hydrate);
    for (const child of node.children) await walk(child, mod);
    if (tag === 'leptos-children') children.pop();
  }
  const ready = Promise.all([glue, compiled]).then(async ([mod, module]) => {
    await mod.default({ module_or_path: module });
    return mod;
  });
  Promise.all([ready, parsed]).then(async ([mod]) => {
    mod.hydrate();
    await walk(document.body, mod);
  });
})
