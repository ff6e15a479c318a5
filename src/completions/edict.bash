# bash completion for edict. Load it with `eval "$(edict completions bash)"` in ~/.bashrc,
# or save it as ~/.local/share/bash-completion/completions/edict.
#
# edict answers itself: the script runs `edict --get-completions INDEX edict WORD...` (an
# edict too old to know the option refuses it, and runs nothing) and reads a kind line
# (normal, filenames or attrs), then `word<TAB>description` lines, the protocol of nix's
# own completion; after `edict HOST nix` the answer is nix's.
_edict() {
    # bash splits words at the characters of COMP_WORDBREAKS, among them = : and @
    # (`--sync=HOST`, `ssh://host`, `me@host`, `--builders @FILE`); edict needs them whole.
    local breaks="" c
    for c in = : @; do
        [[ $COMP_WORDBREAKS == *"$c"* ]] && breaks+=$c
    done
    local cur words cword
    if declare -F _get_comp_words_by_ref >/dev/null; then
        _get_comp_words_by_ref -n "$breaks" cur words cword
    else
        # Without bash-completion, join them back (`--sync`, `=`, `b`): a word that starts
        # with one, or follows one, with no blank between them on the line.
        local i last glued rest=$COMP_LINE
        words=()
        cword=0
        for ((i = 0; i < ${#COMP_WORDS[@]}; i++)); do
            last=$((${#words[@]} - 1))
            glued=1
            [[ $rest == [[:space:]]* ]] && glued=0
            rest=${rest#"${rest%%[![:space:]]*}"}
            rest=${rest#"${COMP_WORDS[i]}"}
            if ((i > 0 && glued)) && [[ -n $breaks ]] &&
                [[ ${COMP_WORDS[i]} == ["$breaks"]* || ${words[last]} == *["$breaks"] ]]; then
                words[last]+=${COMP_WORDS[i]}
            else
                words+=("${COMP_WORDS[i]}")
            fi
            ((i == COMP_CWORD)) && cword=$((${#words[@]} - 1))
        done
        # The word under the cursor, up to the cursor.
        local upto=${COMP_LINE:0:COMP_POINT}
        cur=${upto##*[[:space:]]}
    fi
    # What is typed of the word, up to the cursor, is what completes.
    words[cword]=$cur
    # bash replaces only what follows the word's last break character.
    local before=""
    if [[ -n $breaks && $cur == *["$breaks"]* ]]; then
        before=${cur%"${cur##*["$breaks"]}"}
        # except an @, which readline leaves in the text it replaces (rl_special_prefixes)
        before=${before%@}
    fi
    # `~/bin/edict` as typed is not expanded in quotes: a literal ~/ is what is looked for.
    local edict=${words[0]}
    # shellcheck disable=SC2088
    [[ $edict == "~/"* ]] && edict=$HOME/${edict#"~/"}
    local kind="" line word
    COMPREPLY=()
    while IFS= read -r line; do
        if [[ -z $kind ]]; then
            kind=$line
            continue
        fi
        word=${line%%$'\t'*}
        word=${word#"$before"}
        # A blank or a quote in a candidate would split or end the word on the line.
        if [[ $word == *[[:space:]\'\"\\\$\`\;\&\|\<\>\(\)\*\?\[]* ]]; then
            printf -v word %q "$word"
        fi
        COMPREPLY+=("$word")
    done < <("$edict" --get-completions "$cword" "${words[@]}" 2>/dev/null)
    # compopt needs bash 4: on bash 3.2 (macOS's /bin/bash) attributes get a space after.
    case $kind in
        filenames)
            compopt -o filenames 2>/dev/null
            while IFS= read -r line; do
                COMPREPLY+=("$line")
            done < <(compgen -f -- "$cur")
            ;;
        attrs)
            compopt -o nospace 2>/dev/null
            ;;
    esac
}
complete -F _edict edict
