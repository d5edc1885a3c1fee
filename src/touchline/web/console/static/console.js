/* touchline console: the little the pages need from script. Everything works
   without it; with it, template previews follow typing and risky buttons ask first. */
"use strict";

(function () {
  // -- live template preview ---------------------------------------------------
  var editor = document.getElementById("template-editor");
  if (editor) {
    var timer = null;
    var sequence = 0;
    var state = document.getElementById("preview-state");
    var show = function (id, text) {
      var node = document.getElementById(id);
      if (!node) { return; }
      if (node.tagName === "P") {
        node.hidden = !text;
        var inner = node.querySelector("span");
        (inner || node).textContent = text || "";
      } else {
        node.textContent = text == null ? "" : String(text);
      }
    };
    var refresh = function () {
      var mine = ++sequence;
      if (state) { state.textContent = "Rendering…"; }
      fetch(editor.dataset.preview, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(new FormData(editor)).toString()
      }).then(function (response) {
        if (!response.ok) { throw new Error("the server answered " + response.status); }
        return response.json();
      }).then(function (found) {
        if (mine !== sequence) { return; } // a newer preview is on its way
        show("preview-error", found.error);
        show("preview-subject", found.subject);
        show("preview-customer", found.customer);
        var frame = document.getElementById("preview-html");
        if (frame) { frame.srcdoc = found.html || ""; }
        show("preview-text", found.text);
        if (found.sms) {
          show("sms-encoding", found.sms.encoding);
          show("sms-characters", found.sms.characters);
          show("sms-parts", found.sms.parts);
          show("sms-cost", found.sms.cost);
        }
        if (state) { state.textContent = "Preview up to date"; }
      }).catch(function (error) {
        if (state) { state.textContent = "Preview failed: " + error.message; }
      });
    };
    editor.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, 250);
    });
  }

  // -- confirmations -------------------------------------------------------------
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.dataset ? form.dataset.confirm : null;
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  // -- a broadcast's progress while it is under way --------------------------------
  var progress = document.getElementById("broadcast-progress");
  if (progress && progress.dataset.poll) {
    var every = 1000 * (Number(progress.dataset.every) || 5);
    var figure = function (name, value) {
      progress.querySelectorAll('[data-figure="' + name + '"]').forEach(function (node) {
        node.textContent = Number(value).toLocaleString("en-US");
      });
    };
    var poll = function () {
      fetch(progress.dataset.poll, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error("the server answered " + response.status); }
          return response.json();
        }).then(function (found) {
          // A new status brings other buttons (or the A/B decision): show the whole page anew.
          if (found.status !== progress.dataset.status) {
            window.location.replace(window.location.pathname); // without the last notice
            return;
          }
          Object.keys(found).forEach(function (name) {
            if (typeof found[name] === "number") { figure(name, found[name]); }
          });
          var bar = document.getElementById("progress-bar");
          if (bar) { bar.max = Math.max(found.audience, 1); bar.value = found.settled; }
          window.setTimeout(poll, every);
        }).catch(function () {
          window.setTimeout(poll, every * 4); // the server is busy or away: ask less often
        });
    };
    window.setTimeout(poll, every);
  }

})();
