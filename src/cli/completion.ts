import { defineCommand } from "./command.ts";
import { bashScript, commandTree, fishScript, zshScript } from "./shells.ts";

const SHELLS = ["bash", "zsh", "fish"] as const;

export default defineCommand({
  name: "completion",
  summary: "print shell completion for bash, zsh or fish",
  description:
    "Prints a completion script for every stoa command, subcommand and flag. After a flag that\n" +
    "takes a value it completes that value: file names (--config, --users, --token-file, ...),\n" +
    "directories (--run-dir, --state-dir), a flag's choices (--data-path, --log-level, ...), or\n" +
    "nothing for free-form values such as ports.",
  flags: {},
  positionals: [{ name: "shell", description: "the shell to complete for", required: true, choices: SHELLS }],
  examples: [
    "stoa completion bash > /etc/bash_completion.d/stoa",
    'source <(stoa completion bash)            # this bash session only',
    'stoa completion zsh > "${fpath[1]}/_stoa"',
    "stoa completion fish > ~/.config/fish/completions/stoa.fish",
  ],
  async run({ args, commands }) {
    const nodes = await commandTree(commands);
    const script = args[0] === "bash" ? bashScript(nodes) : args[0] === "zsh" ? zshScript(nodes) : fishScript(nodes);
    process.stdout.write(script);
  },
});
