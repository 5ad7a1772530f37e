/**
 * Files shared with agentguard: private directories, and JSON written so no reader ever sees half
 * a file (written 0600 to a hidden `.<name>.tmp`, then renamed over the final name).
 */

import fs from "node:fs";
import path from "node:path";

/**
 * Create `directory` (and its parents) as 0700, and tighten it if it already exists: parked
 * records hold conversations.
 *
 * @param {string} directory
 * @returns {string} the directory.
 */
export function ensurePrivateDir(directory) {
  fs.mkdirSync(directory, { recursive: true, mode: 0o700 });
  try {
    fs.chmodSync(directory, 0o700);
  } catch {
    // Not ours to change (a shared mount): the files inside are still 0600.
  }
  return directory;
}

/**
 * Write `data` as JSON to `directory/name`, atomically and readable by the owner only.
 *
 * @param {string} directory - an existing directory.
 * @param {string} name - the final file name.
 * @param {unknown} data - JSON-serialisable data.
 * @returns {string} the path written.
 */
export function writePrivateJson(directory, name, data) {
  const final = path.join(directory, name);
  const temporary = path.join(directory, `.${name}.tmp`);
  const descriptor = fs.openSync(temporary, "w", 0o600);
  try {
    // The mode of open() only applies to a new file; a leftover temporary keeps its own.
    fs.fchmodSync(descriptor, 0o600);
    fs.writeSync(descriptor, `${JSON.stringify(data, null, 2)}\n`);
    fs.fsyncSync(descriptor);
  } finally {
    fs.closeSync(descriptor);
  }
  fs.renameSync(temporary, final);
  return final;
}

/**
 * Read and parse a JSON file.
 *
 * @param {string} file
 * @returns {unknown} the parsed value.
 * @throws {Error} when the file is missing or not JSON.
 */
export function readJson(file) {
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

/**
 * The names of the finished `.json` files in `directory` (not hidden temporaries), sorted.
 *
 * @param {string} directory
 * @returns {string[]}
 */
export function listJson(directory) {
  let names;
  try {
    names = fs.readdirSync(directory);
  } catch (error) {
    if (error.code === "ENOENT") return [];
    throw error;
  }
  return names.filter((name) => name.endsWith(".json") && !name.startsWith(".")).sort();
}

/**
 * Remove a file; a file already gone is fine.
 *
 * @param {string} file
 */
export function removeFile(file) {
  fs.rmSync(file, { force: true });
}
