# What zsh's real completion system offers for a command line, one match per line (sorted):
#   zsh -f zsh-complete.zsh FPATH_DIR 'stoa gateway --data-path '
# An interactive zsh runs on a pseudo-terminal (zsh/zpty) with compinit and FPATH_DIR first on
# $fpath; the line is typed with a Tab after it, and compadd is wrapped to print what it adds
# (the approach of zsh-capture-completion). The Tab is bound to a widget that completes and then
# prints the end marker itself: a second key typed after the Tab (a ^X bound to print it) was lost
# now and then — 26 of 200 sessions, four at once — while zle ran the completion. The markers are
# split in the typed commands so the terminal's echo of them never matches. A session whose widget
# does not answer within 10 s is started over once; exits 1 if neither answers.
zmodload zsh/zpty
complete_once() {
  zpty z zsh -f -i
  zpty -w z "PS1='' RPS1=''; fpath=(${(q)1} \$fpath); autoload -U compinit; compinit -u -D"
  zpty -w z "compadd() { if [[ \${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd \"\$@\"; return; fi; local -a hits; builtin compadd -A hits \"\$@\"; (( \$#hits )) && print -rl -- '<M''>'\${^hits}; builtin compadd \"\$@\"; }"
  zpty -w z "stoa_tab() { zle complete-word; print '<EN''D>'; }; zle -N stoa_tab; bindkey '^I' stoa_tab"
  zpty -w z "$2"$'\t'
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
