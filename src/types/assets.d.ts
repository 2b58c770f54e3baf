// Files imported `with { type: "file" }`: the import is the file's path (inside the compiled binary, its embedded copy).
declare module "@jitl/quickjs-wasmfile-release-sync/wasm" {
  const path: string;
  export default path;
}
