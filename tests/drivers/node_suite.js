#!/usr/bin/env node
// node_suite.js: node-postgres (Debian's node-pg) through pgkeel, every result checked.
//
// node-postgres sends a query with values through the extended protocol: by the unnamed statement,
// or, given {name: 'x', text, values}, as named statement `x`, parsed once per connection and
// then only bound and executed. The cases run both ways; two clients that give one name to
// different SQL, a simple-protocol multi-statement string and LISTEN/NOTIFY run once.
//
//   PGHOST=127.0.0.1 PGPORT=6432 PGUSER=app PGPASSWORD=app-pass PGDATABASE=app PGSSLMODE=require \
//     NODE_PATH=/usr/share/nodejs node tests/drivers/node_suite.js [--only NAME]
//
// (NODE_PATH: where Debian's node-pg lives, for a node that does not look there itself.) Prints
// one line per case, `PASS name` or `FAIL name: reason`, then a summary; exits 1 if any failed.
'use strict';
const crypto = require('crypto');
const { Client } = require('pg');

const env = process.env;
const only = [];
for (let i = 2; i < process.argv.length; ++i) {
  if (process.argv[i] === '--only') only.push(process.argv[++i]);
}
const table = `drivers_node_${crypto.randomBytes(4).toString('hex')}`;

function config() {
  const sslmode = env.PGSSLMODE || 'disable';
  return {
    host: env.PGHOST || '127.0.0.1',
    port: Number(env.PGPORT || 5432),
    user: env.PGUSER || 'app',
    password: env.PGPASSWORD || '',
    database: env.PGDATABASE || 'app',
    // require: encrypted, the certificate not checked (libpq's meaning).
    ssl: sslmode === 'disable' ? false : { rejectUnauthorized: false },
    connectionTimeoutMillis: 10000,
  };
}

async function connect() {
  const c = new Client(config());
  c.on('error', () => {}); // a broken connection fails the query that meets it
  await c.connect();
  return c;
}

function expectEq(expected, actual, what) {
  const e = JSON.stringify(expected);
  const a = JSON.stringify(actual);
  if (e !== a) throw new Error(`${what}: expected ${e}, got ${a}`);
}

// q(name) builds the query config: named statement `name`, or the unnamed one when name is null.
function q(name, text, values) {
  return name ? { name, text, values } : { text, values };
}

async function withClients(n, fn) {
  const clients = [];
  try {
    for (let i = 0; i < n; ++i) clients.push(await connect());
    await fn(...clients);
  } finally {
    for (const c of clients) await c.end().catch(() => {});
  }
}

const repeatQuery = (name) => withClients(1, async (c) => {
  for (let i = 0; i < 12; ++i) {
    const r = await c.query(q(name && `${name}_a`, "SELECT $1::int + 1 AS a, $2::text || 'x' AS b", [i, `r${i}`]));
    expectEq([{ a: i + 1, b: `r${i}x` }], r.rows, `run ${i + 1}`);
    const s = await c.query(q(name && `${name}_b`, 'SELECT $1::int * 3 AS m', [i]));
    expectEq([{ m: 3 * i }], s.rows, `second statement, run ${i + 1}`);
  }
});

const transactions = (name) => withClients(1, async (c) => {
  await c.query(`CREATE TABLE IF NOT EXISTS ${table} (id int, v text)`);
  const base = crypto.randomInt(1000000) * 100;
  for (let i = 0; i < 8; ++i) {
    await c.query('BEGIN');
    await c.query(q(name && `${name}_ins`, `INSERT INTO ${table} VALUES ($1, $2)`, [base + i, `v${i}`]));
    const r = await c.query(q(name && `${name}_sel`, `SELECT v FROM ${table} WHERE id = $1`, [base + i]));
    expectEq([{ v: `v${i}` }], r.rows, `read own write ${i + 1}`);
    await c.query('COMMIT');
  }
  const r = await c.query(`SELECT count(*)::int AS n FROM ${table} WHERE id >= $1 AND id < $2`, [base, base + 100]);
  expectEq([{ n: 8 }], r.rows, 'rows committed');
});

const errorThenRepeat = (name) => withClients(1, async (c) => {
  for (let i = 0; i < 8; ++i) {
    try {
      await c.query(q(name && `${name}_div`, 'SELECT 10 / $1::int AS d', [i === 3 ? 0 : 1]));
      if (i === 3) throw new Error('division by zero raised no error');
    } catch (e) {
      if (i !== 3 || e.code !== '22012') throw e;
    }
  }
  const r = await c.query(q(name && `${name}_div`, 'SELECT 10 / $1::int AS d', [2]));
  expectEq([{ d: 5 }], r.rows, 'after the error');
});

// Statements prepared inside a transaction that rolls back stay prepared (Parse is not
// transactional); node-postgres goes on using its named statement in the next transactions.
const rollbackAfterPrepare = (name) => withClients(1, async (c) => {
  await c.query('BEGIN');
  for (let i = 0; i < 3; ++i) {
    const r = await c.query(q(name && `${name}_rb`, 'SELECT $1::int + 7 AS v', [i]));
    expectEq([{ v: i + 7 }], r.rows, `run ${i + 1}`);
  }
  try {
    await c.query('SELECT 1 / 0');
    throw new Error('division by zero raised no error');
  } catch (e) {
    if (e.code !== '22012') throw e;
  }
  await c.query('ROLLBACK');
  for (let i = 0; i < 5; ++i) {
    await c.query('BEGIN');
    const r = await c.query(q(name && `${name}_rb`, 'SELECT $1::int + 7 AS v', [i]));
    expectEq([{ v: i + 7 }], r.rows, `after the rollback, run ${i + 1}`);
    await c.query('COMMIT');
  }
});

// Two clients, one statement name, different SQL (and result types).
const sameNameTwoClients = () => withClients(2, async (a, b) => {
  for (let i = 0; i < 10; ++i) {
    const ra = await a.query({ name: 'same', text: 'SELECT $1::int * 2 AS v', values: [i] });
    expectEq([{ v: 2 * i }], ra.rows, `client a run ${i + 1}`);
    const rb = await b.query({ name: 'same', text: "SELECT $1::text || '!' AS v, true AS t", values: [`b${i}`] });
    expectEq([{ v: `b${i}!`, t: true }], rb.rows, `client b run ${i + 1}`);
  }
});

const simpleMultiStatement = () => withClients(1, async (c) => {
  const r = await c.query("SELECT 1 AS one; SELECT 'two' AS two");
  expectEq([[{ one: 1 }], [{ two: 'two' }]], r.map((x) => x.rows), 'both results');
});

const listenNotify = () => withClients(2, async (listener, notifier) => {
  const channel = `drivers_${crypto.randomBytes(4).toString('hex')}`;
  const got = new Promise((resolve) => listener.on('notification', (m) => resolve(m.payload)));
  await listener.query(`LISTEN ${channel}`);
  await notifier.query(`NOTIFY ${channel}, 'hello'`);
  let timer;
  const payload = await Promise.race([got, new Promise((resolve) => { timer = setTimeout(() => resolve(null), 10000); })]);
  clearTimeout(timer);
  if (payload === null) throw new Error('no notification within 10 s');
  expectEq('hello', payload, 'payload');
});

async function main() {
  const cases = [];
  for (const [label, name] of [['named', 'x'], ['unnamed', null]]) {
    cases.push([`${label} repeat_query`, () => repeatQuery(name)]);
    cases.push([`${label} transactions`, () => transactions(name)]);
    cases.push([`${label} error_then_repeat`, () => errorThenRepeat(name)]);
  }
  // Last of the prepared cases: a statement prepared in a transaction that rolls back can leave
  // pgkeel (as of 2026-12-06) believing in a server statement that does not exist.
  for (const [label, name] of [['named', 'x'], ['unnamed', null]]) {
    cases.push([`${label} rollback_after_prepare`, () => rollbackAfterPrepare(name)]);
  }
  cases.push(['named same_name_two_clients', sameNameTwoClients]);
  cases.push(['simple_multi_statement', simpleMultiStatement]);
  cases.push(['listen_notify', listenNotify]);
  let passed = 0;
  let failed = 0;
  const started = Date.now();
  for (const [name, fn] of cases) {
    if (only.length && !only.some((o) => name.includes(o))) continue;
    const t0 = Date.now();
    let timer;
    try {
      await Promise.race([fn(), new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('no answer within 60 s')), 60000);
      })]);
      ++passed;
      console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
    } catch (e) {
      ++failed;
      console.log(`FAIL ${name}: ${e.code ? e.code + ' ' : ''}${String(e.message).replace(/\n/g, ' | ')}`);
    } finally {
      clearTimeout(timer);
    }
  }
  await withClients(1, (c) => c.query(`DROP TABLE IF EXISTS ${table}`)).catch((e) => console.log(`note: cleanup failed: ${e.message}`));
  console.log(`summary: node-postgres: ${passed} passed, ${failed} failed in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  process.exit(failed ? 1 : 0);
}

main();
