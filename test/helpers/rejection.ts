/**
 * The error a promise rejects with, checked to be of the class a test expects — to assert on its
 * fields (`status`, `error`, `code`, `message`) rather than only on its text.
 *
 * @example
 * const err = await rejection(client.confirm("abc"), MetaApiError);
 * expect([err.status, err.error]).toEqual([502, "confirm_failed"]);
 */
export async function rejection<E extends Error>(p: Promise<unknown>, kind: abstract new (...args: never[]) => E): Promise<E> {
  try {
    await p;
  } catch (err) {
    if (err instanceof kind) return err;
    throw err;
  }
  throw new Error(`expected the call to fail with a ${kind.name}`);
}
