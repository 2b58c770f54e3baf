# What zsh's real completion system offers for a command line, one match per line (sorted):
#   zsh -f zsh-complete.zsh FPATH_DIR 'stoa gateway --data-path '
# An interactive zsh runs on a pseudo-terminal (zsh/zpty) with compinit and FPATH_DIR first on
# $fpath; the line is typed with a Tab after it, and compadd is wrapped to print what it adds
# (the approach of zsh-capture-completion). The markers are split in the typed commands so the
# terminal's echo of them never matches. A session whose widget does not answer within 10 s is
# started over once (now and then — about 1 in 30 — the pty loses the typed keys and nothing
# comes at all; a completion that is wrong is wrong both times); exits 1 if neither answers.
zmodload zsh/zpty
complete_once() {
  zpty z zsh -f -i
  zpty -w z "PS1='' RPS1=''; fpath=(${(q)1} \$fpath); autoload -U compinit; compinit -u -D"
  zpty -w z "compadd() { if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd \"\$@\"; return; fi; local -a hits; builtin compadd -A hits \"\$@\"; (( \$#hits )) && print -rl -- '<M''>'\${^hits}; builtin compadd \"\$@\"; }"
  zpty -w z "stoa_done() { print '<EN''D>'; }; zle -N stoa_done; bindkey '^X' stoa_done; bindkey '^I' complete-word"
  zpty -w z "$2"$'\t'$'\x18'
  integer deadline=$(( SECONDS + 10 ))
  out=""
  local line
  while (( SECONDS < deadline )); do
    if zpty -r -t z line; then
      out+=$line
      [[ $line == *'<END>'* ]] && break
    else
      sleep 0.02
    fi
  done
  zpty -d z
  [[ $out == *'<END>'* ]]
}
out=""
complete_once "$1" "$2" || complete_once "$1" "$2" || { print -u2 "zsh-complete: no answer from the completion widget (twice)"; exit 1; }
print -r -- "${out//$'\r'/}" | grep -a -o '<M>.*' | sed 's/^<M>//' | sort -u
