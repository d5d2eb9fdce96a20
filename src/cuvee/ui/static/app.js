// The page: screens chosen by the URL's #fragment, the API key field, and each screen's module.

import { apiKey, setApiKey } from "./api.js";
import { initChat } from "./chat.js";
import { initCompare } from "./compare.js";
import { initDocs } from "./docs.js";
import { initModels } from "./models.js";
import { initEvaluate } from "./evaluate.js";
import { initKeys } from "./keys.js";
import { initTrain } from "./train.js";

const screens = ["chat", "compare", "docs", "models", "train", "evaluate", "keys"];

function show() {
  const wanted = location.hash.slice(1);
  const name = screens.includes(wanted) ? wanted : "chat";
  for (const s of screens) {
    document.getElementById(`screen-${s}`).hidden = s !== name;
  }
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.screen === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
}

const chat = initChat();
const compare = initCompare();
const docs = initDocs();
const models = initModels();
const train = initTrain({ onModel: () => models.reload() });
const keys = initKeys();
const evaluate = initEvaluate();
const key = document.getElementById("api-key");
key.value = apiKey();
key.addEventListener("change", () => {
  setApiKey(key.value.trim());
  chat.reload();
  compare.reload();
  docs.reload();
  models.reload();
  train.reload();
  keys.reload();
  evaluate.reload();
});
window.addEventListener("hashchange", show);
show();
document.body.dataset.ready = "true";
