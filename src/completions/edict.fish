# fish completion for edict. Load it with `edict completions fish | source` in
# ~/.config/fish/config.fish, or save it as ~/.config/fish/completions/edict.fish.
#
# edict answers itself: the function runs `EDICT_GET_COMPLETIONS=INDEX edict WORD...` and
# reads a kind line (normal, filenames or attrs), then `word<TAB>description` lines (fish's
# own format), the protocol nix's completion uses; after `edict HOST nix` the answer is nix's.
function __edict_complete
    set -l words (commandline --current-process --tokenize --cut-at-cursor)
    set -l current (commandline --current-token --cut-at-cursor)
    set -l answer (env EDICT_GET_COMPLETIONS=(count $words) $words $current 2>/dev/null)
    if test (count $answer) -gt 1
        printf '%s\n' $answer[2..-1]
    end
    if test "$answer[1]" = filenames
        __fish_complete_path $current
    end
end

complete --command edict --no-files --arguments '(__edict_complete)'
