/* touchline.js: the site tracker. Load it with
     <script src="https://touchline.example/touchline.js" data-write-key="tlw_..." async></script>
   and call touchline.push(["track", "Product Viewed", {...}]) (works before the script
   has loaded), or touchline.track(...), touchline.page(...), touchline.identify(...)
   once it has.

   Calls are Segment messages posted in batches to /v1/batch with the write key in the
   body, as text/plain (no CORS preflight), by navigator.sendBeacon (which survives the
   page closing), else fetch with keepalive. A visitor is remembered by an anonymous id
   in a first-party cookie; identify() adds the user id, kept in localStorage. */
(function () {
  "use strict";
  var me = document.currentScript;
  if (!me || window.touchline && window.touchline.loaded) { return; }
  var writeKey = me.getAttribute("data-write-key") || "";
  var host = (me.getAttribute("data-host") || new URL(me.src, location.href).origin).replace(/\/$/, "");
  var autoPage = me.getAttribute("data-auto-page") !== "false";
  var COOKIE = "tl_aid";
  var USER = "tl_uid";
  var MAX_BATCH = 20;      // messages per request
  var FLUSH_MS = 1000;     // how long a call waits for others to share its request
  var YEAR = 365 * 24 * 3600;
  var queue = [];
  var timer = null;

  function uuid() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 15) | 64;
    bytes[8] = (bytes[8] & 63) | 128;
    var hex = Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" + hex.slice(20);
  }

  function readCookie(name) {
    var found = document.cookie.split("; ").filter(function (c) { return c.indexOf(name + "=") === 0; })[0];
    return found ? decodeURIComponent(found.slice(name.length + 1)) : null;
  }

  function anonymousId() {
    var id = readCookie(COOKIE);
    if (!id) {
      id = uuid();
    }
    // Refreshed on every visit so an active visitor keeps the same id.
    document.cookie = COOKIE + "=" + encodeURIComponent(id) + "; Max-Age=" + YEAR + "; Path=/; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
    return id;
  }

  function storedUser() {
    try { return window.localStorage.getItem(USER); } catch (e) { return null; }
  }

  function context() {
    return {
      page: { path: location.pathname, url: location.href, referrer: document.referrer, title: document.title, search: location.search },
      userAgent: navigator.userAgent,
      locale: navigator.language,
      library: { name: "touchline.js", version: "1" }
    };
  }

  function enqueue(message) {
    message.messageId = uuid();
    message.timestamp = new Date().toISOString();
    message.anonymousId = anonymousId();
    var userId = storedUser();
    if (userId && !message.userId) { message.userId = userId; }
    message.context = context();
    queue.push(message);
    if (queue.length >= MAX_BATCH) { flush(); } else if (!timer) { timer = window.setTimeout(flush, FLUSH_MS); }
  }

  function flush() {
    window.clearTimeout(timer);
    timer = null;
    while (queue.length) {
      var batch = queue.splice(0, MAX_BATCH);
      var body = JSON.stringify({ batch: batch, writeKey: writeKey, sentAt: new Date().toISOString() });
      var url = host + "/v1/batch";
      var sent = false;
      if (navigator.sendBeacon) {
        try { sent = navigator.sendBeacon(url, new Blob([body], { type: "text/plain" })); } catch (e) { sent = false; }
      }
      if (!sent && window.fetch) {
        fetch(url, { method: "POST", body: body, keepalive: true, mode: "cors", credentials: "omit",
                     headers: { "Content-Type": "text/plain" } }).catch(function () {});
      }
    }
  }

  var api = {
    loaded: true,
    page: function (name, properties) {
      enqueue({ type: "page", name: name || document.title, properties: properties || {} });
    },
    track: function (event, properties) {
      enqueue({ type: "track", event: String(event), properties: properties || {} });
    },
    identify: function (userId, traits) {
      if (userId) {
        try { window.localStorage.setItem(USER, String(userId)); } catch (e) { /* private mode */ }
      }
      enqueue({ type: "identify", userId: userId ? String(userId) : undefined, traits: traits || {} });
    },
    reset: function () {
      try { window.localStorage.removeItem(USER); } catch (e) { /* private mode */ }
      document.cookie = COOKIE + "=; Max-Age=0; Path=/";
    },
    flush: flush,
    push: function (call) {
      var method = api[call && call[0]];
      if (typeof method === "function") { method.apply(api, Array.prototype.slice.call(call, 1)); }
    }
  };

  var waiting = Array.isArray(window.touchline) ? window.touchline : [];
  window.touchline = api;
  if (autoPage) { api.page(); }
  waiting.forEach(api.push);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") { flush(); }
  });
  window.addEventListener("pagehide", flush);
})();
