'use strict';
// The processor of chat.yml. Each virtual user is one matched pair: user A's socket is the one Artillery's
// WebSocket engine opens and times; user B is a responder this file runs beside it, answering every
// "ping N" of A with "pong N". Both sockets check what the server promises (message ids count up from 1
// in a conversation, none missing, none twice), and both resume with `?after=<last id seen>` when the
// server closes them with a code the seed's client retries.

const crypto = require('node:crypto');
const WebSocket = require('ws');

// Close codes after which a client reconnects and resumes (README, "Close codes"); 4004 wants a fresh
// token first. Anything else ends the virtual user with an error.
const RESUMABLE = new Set([1001, 1006, 1011, 1012, 1013, 4004]);
const RECONNECT_TRIES = 8;
const PASSWORD = 'load-test-password';

function wsBase(target) {
  return target.replace(/^http/, 'ws').replace(/\/+$/, '');
}

function seconds(value, fallback) {
  const n = Number(value);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

async function api(base, method, path, body, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const answer = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await answer.text();
  if (answer.status >= 300) {
    const error = new Error(`${method} ${path}: ${answer.status} ${text.slice(0, 200)}`);
    error.code = `http_${answer.status}`;
    throw error;
  }
  return text ? JSON.parse(text) : null;
}

async function signUp(base, prefix, ee) {
  const username = `${prefix}_${crypto.randomBytes(6).toString('hex')}`;
  const started = Date.now();
  const user = await api(base, 'POST', '/api/register/', { username, password: PASSWORD });
  const tokens = await api(base, 'POST', '/api/token/', { username, password: PASSWORD });
  ee.emit('histogram', 'chat.sign_in_ms', Date.now() - started);
  return { id: user.id, username, access: tokens.access, refresh: tokens.refresh };
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// One participant's socket: the ids it saw, the sends not yet echoed back (resent with the same client_id
// after a reconnect, which the server stores once), and waiters for frames.
class ChatSocket {
  constructor(name, base, conversationId, user, ee, timeoutS) {
    this.name = name;
    this.base = base;
    this.conversationId = conversationId;
    this.user = user;
    this.ee = ee;
    this.timeoutMs = timeoutS * 1000;
    this.lastId = 0; // the conversation is new: its first message is 1
    this.unacked = new Map(); // client_id -> frame
    this.waiters = [];
    this.onMessage = null;
    this.failure = null;
    this.ws = null;
    this.closing = false;
    this.reconnecting = null;
  }

  url(after) {
    const query = `token=${encodeURIComponent(this.user.access)}${after ? `&after=${after}` : ''}`;
    return `${wsBase(this.base)}/ws/conversations/${this.conversationId}/?${query}`;
  }

  adopt(ws) {
    this.ws = ws;
    ws.on('message', (data) => this.receive(String(data)));
    ws.on('close', (code) => this.closed(ws, code));
    ws.on('error', () => {}); // 'close' follows and decides
  }

  open(after) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url(after));
      // Without a listener an 'error' event throws; the promise settles through the others.
      ws.on('error', (err) => reject(err));
      ws.once('unexpected-response', (_req, res) => {
        res.resume();
        reject(Object.assign(new Error(`handshake answered ${res.statusCode}`), { code: `handshake_${res.statusCode}` }));
        ws.terminate();
      });
      ws.once('open', () => {
        this.adopt(ws);
        resolve(ws);
      });
    });
  }

  fail(code, detail) {
    if (this.failure) return;
    this.failure = Object.assign(new Error(`${this.name}: ${detail}`), { code });
    this.ee.emit('counter', `chat.failures.${code}`, 1);
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(this.failure);
    }
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return this.fail('bad_json', `not JSON: ${text.slice(0, 80)}`);
    }
    this.ee.emit('counter', 'chat.frames_received', 1);
    if (frame.type === 'error') {
      return this.fail(`error_frame_${frame.code}`, `error frame ${text.slice(0, 200)}`);
    }
    if (frame.type !== 'message') return;
    const message = frame.message;
    if (message.id <= this.lastId) {
      // A resent client_id answered with the message this socket already showed is not a repeat.
      if (message.client_id && this.unacked.delete(message.client_id)) return;
      return this.fail('duplicate', `message ${message.id} again after ${this.lastId}`);
    }
    if (message.id !== this.lastId + 1) {
      return this.fail('gap', `message ${message.id} after ${this.lastId}`);
    }
    this.lastId = message.id;
    this.ee.emit('counter', 'chat.messages_received', 1);
    if (message.sender_id === this.user.id && message.client_id) this.unacked.delete(message.client_id);
    if (this.onMessage) this.onMessage(message);
    const met = this.waiters.filter((waiter) => waiter.test(message));
    this.waiters = this.waiters.filter((waiter) => !met.includes(waiter));
    for (const waiter of met) {
      clearTimeout(waiter.timer);
      waiter.resolve(message);
    }
  }

  send(content, clientId) {
    const frame = JSON.stringify({ type: 'message', content, client_id: clientId });
    this.unacked.set(clientId, frame);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(frame);
    this.ee.emit('counter', 'chat.messages_sent', 1);
  }

  waitFor(test, what) {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const waiter = { test, resolve, reject };
      waiter.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        this.fail('timeout', `no ${what} within ${this.timeoutMs} ms`);
        reject(this.failure);
      }, this.timeoutMs);
      this.waiters.push(waiter);
    });
  }

  closed(ws, code) {
    if (ws !== this.ws || this.closing) return;
    this.ee.emit('counter', `chat.closed_by_server.${code}`, 1);
    if (!RESUMABLE.has(code)) return this.fail(`closed_${code}`, `closed ${code}`);
    const since = Date.now();
    this.reconnecting = this.reconnect({ refresh: code === 4004, backoff: true }).then(
      () => {
        this.ee.emit('counter', 'chat.reconnects', 1);
        this.ee.emit('histogram', 'chat.reconnect_ms', Date.now() - since);
      },
      (err) => this.fail('reconnect_failed', err.message)
    );
  }

  // Open again with ?after= the last id seen, trying RECONNECT_TRIES times with growing waits (the
  // first one at once unless `backoff`: a server that closed the socket wants a pause), then resend
  // what was never echoed.
  async reconnect({ refresh = false, backoff = false } = {}) {
    this.closing = false;
    for (let attempt = 0; attempt < RECONNECT_TRIES; attempt++) {
      if (attempt > 0 || backoff) await delay(Math.min(5000, 200 * 2 ** attempt) * (0.5 + Math.random()));
      try {
        if (refresh) {
          const tokens = await api(this.base, 'POST', '/api/token/refresh/', { refresh: this.user.refresh });
          Object.assign(this.user, { access: tokens.access, refresh: tokens.refresh });
          refresh = false;
        }
        await this.open(this.lastId);
        for (const frame of this.unacked.values()) this.ws.send(frame);
        return;
      } catch (err) {
        this.ee.emit('counter', 'chat.reconnect_attempts_failed', 1);
      }
    }
    throw new Error(`no reconnect in ${RECONNECT_TRIES} tries`);
  }

  async leave() {
    this.closing = true;
    if (!this.ws || this.ws.readyState === WebSocket.CLOSED) return;
    const done = new Promise((resolve) => this.ws.once('close', resolve));
    this.ws.close(1000);
    await Promise.race([done, delay(2000)]);
  }
}

// Metrics of the connect step, which Artillery gives no emitter: held until adoptSocket has one.
class HeldMetrics {
  constructor() {
    this.held = [];
  }

  emit(...args) {
    this.held.push(args);
  }

  flushTo(ee) {
    for (const args of this.held.splice(0)) ee.emit(...args);
  }
}

// connect.function: runs before the engine opens A's socket. Signs two users up and in, matches them
// (each likes the other), opens B's responder socket and points the engine at A's conversation socket.
// A failure here fails the virtual user, and Artillery counts it under errors.<code>.
function signInAndMatch(wsArgs, context, done) {
  const ee = new HeldMetrics();
  context._held = ee;
  (async () => {
    const base = wsArgs.target.replace(/\/+$/, '');
    const [a, b] = await Promise.all([signUp(base, 'art_a', ee), signUp(base, 'art_b', ee)]);
    await api(base, 'POST', '/api/likes/', { user_id: b.id }, a.access);
    const liked = await api(base, 'POST', '/api/likes/', { user_id: a.id }, b.access);
    if (!liked.match) throw Object.assign(new Error('mutual likes made no match'), { code: 'no_match' });
    const conversationId = liked.match.conversation_id;
    ee.emit('counter', 'chat.matches', 1);
    const timeoutS = seconds(context.vars.timeout, 10);
    const pair = {
      a: new ChatSocket('A', base, conversationId, a, ee, timeoutS),
      b: new ChatSocket('B', base, conversationId, b, ee, timeoutS),
      round: 0,
    };
    pair.b.onMessage = (message) => {
      const ping = /^ping (\d+)$/.exec(message.content);
      if (message.sender_id === a.id && ping) pair.b.send(`pong ${ping[1]}`, `pong-${ping[1]}`);
    };
    await pair.b.open(0);
    context._pair = pair;
    wsArgs.target = pair.a.url(0);
  })().then(
    () => done(),
    (err) => done(err)
  );
}

// The first function step: A's socket, opened by the engine, joins the pair, and the metrics held
// since the connect step go to Artillery.
async function adoptSocket(context, ee) {
  const pair = context._pair;
  pair.a.ee = ee;
  pair.b.ee = ee;
  context._held.flushTo(ee);
  pair.a.adopt(context.ws);
}

function current(pair, context) {
  // A reconnect replaces A's socket; the engine closes whatever context.ws is at the end.
  context.ws = pair.a.ws;
}

// One round: A sends "ping N"; B answers "pong N"; A sees it. The time between is chat.ping_pong_ms.
async function pingPong(context, ee) {
  const pair = context._pair;
  const n = ++pair.round;
  const started = Date.now();
  const pong = pair.a.waitFor((m) => m.sender_id === pair.b.user.id && m.content === `pong ${n}`, `pong ${n}`);
  pair.a.send(`ping ${n}`, `ping-${n}`);
  await pong;
  ee.emit('histogram', 'chat.ping_pong_ms', Date.now() - started);
  ee.emit('counter', 'chat.ping_pongs', 1);
  current(pair, context);
}

// A leaves; B sends `missed` messages while A is away; A comes back with ?after= the last id it saw and
// must receive exactly those, in order (ChatSocket checks), before anything else.
async function dropAndResume(context, ee) {
  const pair = context._pair;
  const missed = Number(context.vars.missed) || 3;
  await pair.a.leave();
  const stored = [];
  for (let i = 1; i <= missed; i++) {
    const content = `while away ${pair.round}.${i}`;
    stored.push(pair.b.waitFor((m) => m.content === content, `echo of ${content}`));
    pair.b.send(content, `away-${pair.round}-${i}`);
  }
  await Promise.all(stored);
  const started = Date.now();
  const last = pair.b.lastId;
  const replayed = pair.a.waitFor((m) => m.id === last, `replay up to ${last}`);
  replayed.catch(() => {}); // awaited below; a failed reconnect must not leave it unhandled
  await pair.a.reconnect();
  await replayed;
  ee.emit('histogram', 'chat.resume_ms', Date.now() - started);
  ee.emit('counter', 'chat.resumes', 1);
  ee.emit('counter', 'chat.replayed_messages', missed);
  current(pair, context);
}

async function finish(context) {
  const pair = context._pair;
  if (pair.a.reconnecting) await pair.a.reconnecting;
  if (pair.b.reconnecting) await pair.b.reconnecting;
  const failure = pair.a.failure || pair.b.failure;
  await pair.b.leave();
  pair.a.closing = true;
  current(pair, context);
  if (failure) throw failure;
}

module.exports = { signInAndMatch, adoptSocket, pingPong, dropAndResume, finish };
