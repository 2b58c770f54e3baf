/**
 * The gateway's TLS pair, read and checked once on the main thread (at start and on each
 * reload) before any router sees it: the certificate parses, the key parses and belongs to it.
 * Routers get only PEM text that passed (router.ts `reloadTls`), so a bad replacement is refused
 * here and the old pair stays in use everywhere.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { StoaError, describeError } from "../core/errors.ts";
import { readTls } from "./startup.ts";

/** A checked PEM pair and what the log says about it. */
export interface TlsPair {
  cert: string;
  key: string;
  /** SHA-256 of the DER certificate, `AB:CD:…` (what `openssl x509 -fingerprint -sha256` prints). */
  fingerprint: string;
  /** The certificate's notAfter, ISO 8601. */
  notAfter: string;
  subject: string;
}

/**
 * Reads `cert`/`key` and checks them as a pair. Throws `StoaError("config")` naming the file.
 * @example
 * const pair = loadTlsPair({ cert: "/etc/stoa/cert.pem", key: "/etc/stoa/key.pem" });
 * log.info("certificate", { sha256: pair.fingerprint, not_after: pair.notAfter });
 */
export function loadTlsPair(paths: { cert: string; key: string }): TlsPair {
  const pem = readTls(paths);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(pem.cert);
  } catch (err) {
    throw new StoaError("config", `${paths.cert} is not a valid PEM certificate (${describeError(err)}); check --tls-cert`);
  }
  let matches: boolean;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(pem.key));
  } catch (err) {
    throw new StoaError("config", `${paths.key} is not a valid PEM private key (${describeError(err)}); check --tls-key`);
  }
  if (!matches) throw new StoaError("config", `the key ${paths.key} does not belong to the certificate ${paths.cert}; replace both files together`);
  const notAfter = new Date(x509.validTo);
  return {
    ...pem,
    fingerprint: x509.fingerprint256,
    notAfter: Number.isNaN(notAfter.getTime()) ? x509.validTo : notAfter.toISOString(),
    subject: x509.subject.replace(/\n/g, ", "),
  };
}
