/**
 * Shell completion scripts for bash, zsh and fish, generated from the command table: every
 * command, subcommand, flag and fixed choice the CLI declares, so completion can never drift
 * from the code. Each script walks the words typed so far to find the command path (skipping
 * each flag's value), then completes the word under the cursor:
 *
 *   after a flag that takes a value   its choices, file names (`file`/`path` flags), directory
 *                                     names (`dir` flags), or nothing — never flag names
 *   (also `--flag=value`)
 *   otherwise                         the node's subcommands, positional choices and flags
 */
import { type Command, type CommandEntry, type ValueCompletion, isGroup, kebab } from "./command.ts";

interface NodeFlag {
  name: string;
  short?: string;
  description: string;
  takesValue: boolean;
  choices?: readonly string[];
  complete?: ValueCompletion;
}

interface Node {
  /** Space-joined command path below the program, "" for the program itself. */
  path: string;
  summary: string;
  children: { name: string; summary: string }[];
  flags: NodeFlag[];
  /** Fixed choices of the first positional (e.g. completion's shells). */
  argChoices: readonly string[];
}

/** Loads every command and flattens the tree into nodes. */
export async function commandTree(entries: readonly CommandEntry[]): Promise<Node[]> {
  const nodes: Node[] = [
    {
      path: "",
      summary: "stoa",
      children: entries.map((e) => ({ name: e.name, summary: e.summary })),
      flags: [
        { name: "help", short: "h", description: "show help", takesValue: false },
        { name: "version", description: "print the version", takesValue: false },
      ],
      argChoices: [],
    },
  ];
  const walk = (cmd: Command, path: string): void => {
    if (isGroup(cmd)) {
      nodes.push({
        path,
        summary: cmd.summary,
        children: cmd.subcommands.map((s) => ({ name: s.name, summary: s.summary })),
        flags: [{ name: "help", short: "h", description: "show help", takesValue: false }],
        argChoices: [],
      });
      for (const sub of cmd.subcommands) walk(sub, `${path} ${sub.name}`);
      return;
    }
    nodes.push({
      path,
      summary: cmd.summary,
      children: [],
      flags: [
        ...Object.entries(cmd.flags).map(([key, f]) => ({
          name: kebab(key),
          short: f.short,
          description: f.description,
          takesValue: f.kind === "string",
          choices: f.choices,
          complete: f.complete,
        })),
        { name: "help", short: "h", description: "show help", takesValue: false },
      ],
      argChoices: cmd.positionals?.[0]?.choices ?? [],
    });
  };
  for (const entry of entries) walk((await entry.load()).default, entry.name);
  return nodes;
}

/** Single-quotes a string for sh/bash/zsh/fish. */
function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** How the scripts name a node: its path with a leading space (`" addr prefix"`), "" for the program. */
function pathKey(n: Node): string {
  return n.path === "" ? "" : ` ${n.path}`;
}

/** The spellings of a flag on the command line: `--name`, and `-s` when it has a short form. */
function spellings(f: NodeFlag): string[] {
  return f.short ? [`--${f.name}`, `-${f.short}`] : [`--${f.name}`];
}

/** `" <path>:<spelling>"` for every flag of every node that `pick` selects: the case labels of the scripts. */
function flagKeys(nodes: Node[], pick: (f: NodeFlag) => boolean): string[] {
  return nodes.flatMap((n) => n.flags.filter(pick).flatMap((f) => spellings(f).map((s) => `${pathKey(n)}:${s}`)));
}

/** What is completed after a flag that takes a value, grouped into the scripts' case branches. */
function valueBranches(nodes: Node[]) {
  const takes = (f: NodeFlag) => f.takesValue;
  return {
    /** Every value flag: the walk skips the word after it. */
    all: flagKeys(nodes, takes),
    choices: nodes.flatMap((n) =>
      n.flags.filter((f) => takes(f) && f.choices).map((f) => ({ keys: spellings(f).map((s) => `${pathKey(n)}:${s}`), choices: f.choices ?? [] })),
    ),
    files: flagKeys(nodes, (f) => takes(f) && !f.choices && f.complete === "file"),
    dirs: flagKeys(nodes, (f) => takes(f) && !f.choices && f.complete === "dir"),
  };
}

/** A case label matching any of `keys` (each quoted), or undefined for none. */
function label(keys: string[]): string | undefined {
  return keys.length > 0 ? keys.map(q).join("|") : undefined;
}

export function bashScript(nodes: Node[]): string {
  const paths = nodes.filter((n) => n.path !== "").map((n) => q(pathKey(n)));
  const words = nodes.map((n) => {
    const list = [...n.children.map((c) => c.name), ...n.argChoices, ...n.flags.map((f) => `--${f.name}`)];
    return `    ${q(pathKey(n))}) words=${q(list.join(" "))} ;;`;
  });
  const v = valueBranches(nodes);
  const valueCases = [
    ...v.choices.map((c) => `    ${label(c.keys)}) COMPREPLY=($(compgen -W ${q(c.choices.join(" "))} -- "$cur")) ;;`),
    v.files.length > 0 ? `    ${label(v.files)}) _stoa_names -f ;;` : "",
    v.dirs.length > 0 ? `    ${label(v.dirs)}) _stoa_names -d ;;` : "",
    "    *) COMPREPLY=() ;;",
  ];
  return `# bash completion for stoa — generated by \`stoa completion bash\`.
# Install: stoa completion bash > /etc/bash_completion.d/stoa   (or source it from ~/.bashrc)
# File or directory names (compgen -f / -d) for $cur, one per line so names with spaces survive.
_stoa_names() {
  local IFS=$'\\n'
  compopt -o filenames 2>/dev/null
  COMPREPLY=($(compgen "$1" -- "$cur"))
}
_stoa() {
  local cur w cmdpath="" words="" i skip=0 flag=""
  cur="\${COMP_WORDS[COMP_CWORD]}"
  # --flag=value: bash splits the word at '=' (COMP_WORDBREAKS); complete after it.
  [[ $cur == = ]] && cur=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    if ((skip)); then
      [[ $w == = ]] || skip=0
      continue
    fi
    case "$cmdpath:$w" in
      ${label(v.all) ?? "''"}) skip=1; flag="$w"; continue ;;
    esac
    case "$w" in
      -*) continue ;;
    esac
    case "$cmdpath $w" in
      ${paths.join("|") || "' '"}) cmdpath="$cmdpath $w" ;;
    esac
  done
  if ((skip)); then
    case "$cmdpath:$flag" in
${valueCases.join("\n")}
    esac
    return 0
  fi
  case "$cmdpath" in
${words.join("\n")}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _stoa stoa
`.replace(/\n\s*(?=\n)/g, "");
}

export function zshScript(nodes: Node[]): string {
  const paths = nodes.filter((n) => n.path !== "").map((n) => q(pathKey(n)));
  const entries = nodes.map((n) => {
    const items = [
      ...n.children.map((c) => `${c.name}:${c.summary}`),
      ...n.argChoices.map((c) => `${c}:${c}`),
    ];
    const flags = n.flags.map((f) => `--${f.name}:${f.description}`);
    return `    ${q(pathKey(n))})
      items=(${items.map(q).join(" ")})
      flags=(${flags.map(q).join(" ")}) ;;`;
  });
  const v = valueBranches(nodes);
  const valueCases = [
    ...v.choices.map((c) => `      ${label(c.keys)}) compadd -- ${c.choices.map(q).join(" ")} ;;`),
    v.files.length > 0 ? `      ${label(v.files)}) _files ;;` : "",
    v.dirs.length > 0 ? `      ${label(v.dirs)}) _files -/ ;;` : "",
    `      *) _message -e values "\${flag#--} value" ;;`,
  ];
  return `#compdef stoa
# zsh completion for stoa — generated by \`stoa completion zsh\`.
# Install: stoa completion zsh > "\${fpath[1]}/_stoa"   (then restart zsh)
_stoa() {
  local cmdpath="" w i skip=0 flag=""
  local -a items flags
  for ((i = 2; i < CURRENT; i++)); do
    w=\${words[i]}
    if ((skip)); then skip=0; continue; fi
    case "$cmdpath:$w" in
      ${label(v.all) ?? "''"}) skip=1; flag=$w; continue ;;
    esac
    case $w in
      -*) continue ;;
    esac
    case "$cmdpath $w" in
      ${paths.join("|") || "' '"}) cmdpath="$cmdpath $w" ;;
    esac
  done
  # --flag=value: complete the part after '='.
  if ((!skip)) && [[ \${words[CURRENT]} == -*=* ]]; then
    case "$cmdpath:\${words[CURRENT]%%=*}" in
      ${label(v.all) ?? "''"}) skip=1; flag=\${words[CURRENT]%%=*}; compset -P '*=' ;;
    esac
  fi
  if ((skip)); then
    case "$cmdpath:$flag" in
${valueCases.join("\n")}
    esac
    return
  fi
  case $cmdpath in
${entries.join("\n")}
  esac
  if [[ \${words[CURRENT]} == -* ]]; then
    _describe -t flags 'flag' flags
  else
    _describe -t commands 'command' items
  fi
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _stoa "$@"
else
  compdef _stoa stoa
fi
`.replace(/\n\s*(?=\n)/g, "");
}

/** fish `complete` options for a flag's value: choices, file names, directory names or nothing. */
function fishValue(f: NodeFlag): string {
  if (!f.takesValue) return "";
  if (f.choices) return ` -x -a ${q(f.choices.join(" "))}`;
  if (f.complete === "file") return " -r -F";
  if (f.complete === "dir") return ` -x -a ${q("(__fish_complete_directories (commandline -ct))")}`;
  return " -x";
}

export function fishScript(nodes: Node[]): string {
  const lines: string[] = [
    "# fish completion for stoa — generated by `stoa completion fish`.",
    "# Install: stoa completion fish > ~/.config/fish/completions/stoa.fish",
    `set -g __stoa_nodes ${nodes.filter((n) => n.path !== "").map((n) => q(n.path)).join(" ")}`,
    // "<path>:<flag>" for every flag that takes a value: the word after it is not a command.
    `set -g __stoa_value_flags ${flagKeys(nodes, (f) => f.takesValue).map((k) => q(k.trimStart())).join(" ")}`,
    "function __stoa_path",
    "    set -l tokens (commandline -opc)",
    "    set -l p",
    "    set -l skip 0",
    "    for t in $tokens[2..-1]",
    "        if test $skip = 1",
    "            set skip 0",
    "            continue",
    "        end",
    "        if contains -- (string join ' ' $p):$t $__stoa_value_flags",
    "            set skip 1",
    "            continue",
    "        end",
    "        string match -q -- '-*' $t; and continue",
    "        if contains -- (string join ' ' $p $t) $__stoa_nodes",
    "            set p $p $t",
    "        end",
    "    end",
    "    string join ' ' $p",
    "end",
    "function __stoa_at",
    "    set -l p (__stoa_path)",
    '    test "$p" = "$argv[1]"',
    "end",
    "complete -c stoa -f",
  ];
  for (const n of nodes) {
    const cond = `-n ${q(`__stoa_at ${q(n.path)}`)}`;
    for (const c of n.children) lines.push(`complete -c stoa ${cond} -a ${q(c.name)} -d ${q(c.summary)}`);
    for (const c of n.argChoices) lines.push(`complete -c stoa ${cond} -a ${q(c)}`);
    for (const f of n.flags) {
      const short = f.short ? ` -s ${f.short}` : "";
      lines.push(`complete -c stoa ${cond} -l ${f.name}${short}${fishValue(f)} -d ${q(f.description)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
