// Small DOM helpers shared by the panels.

// An element with properties and children: el("td", { className: "num" }, "3.2 s").
export function el(tag, props = {}, ...children) {
  const { dataset = {}, ...rest } = props;
  const node = Object.assign(document.createElement(tag), rest);
  Object.assign(node.dataset, dataset);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function button(label, onClick) {
  const node = el("button", { type: "button", textContent: label });
  node.addEventListener("click", onClick);
  return node;
}

// A status line: kind "ok", "busy" or "error" colours it (see app.css).
export function say(output, text, kind = "ok") {
  output.textContent = text;
  output.dataset.kind = kind;
}

export function errorText(error) {
  return error?.detail ?? error?.message ?? String(error);
}

// The non-empty text fields of a form, trimmed.
export function filledFields(form, names) {
  const fields = {};
  for (const name of names) {
    const value = form.elements[name]?.value.trim();
    if (value) fields[name] = value;
  }
  return fields;
}

export function seconds(value) {
  return value === null || value === undefined ? "" : `${Number(value).toFixed(2)} s`;
}

// Runs `action` with the form's submit button disabled, reporting failures in `output`.
export async function busy(form, output, action) {
  const submit = form.querySelector("button[type=submit], button:not([type])");
  if (submit) submit.disabled = true;
  try {
    await action();
  } catch (error) {
    say(output, errorText(error), "error");
  } finally {
    if (submit) submit.disabled = false;
  }
}
