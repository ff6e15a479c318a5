# fish completion for edict. Load it with `edict completions fish | source` in
# ~/.config/fish/config.fish, or save it as ~/.config/fish/completions/edict.fish.
#
# edict answers itself: the function runs `edict --get-completions INDEX edict WORD...` (an
# edict too old to know the option refuses it, and runs nothing) and reads a kind line
# (normal, filenames or attrs), then `word<TAB>description` lines (fish's own format), the
# protocol of nix's completion; after `edict HOST nix` the answer is nix's.
function __edict_complete
    set -l words (commandline --current-process --tokenize --cut-at-cursor)
    # The word under the cursor, up to it, unquoted as the words before it are.
    set -l current (commandline --current-token --cut-at-cursor)
    set -l typed (string unescape -- $current)
    or set typed $current
    # `~/bin/edict` as typed.
    set -l edict (string replace -r '^~/' "$HOME/" -- $words[1])
    set -l answer ($edict --get-completions (count $words) $words "$typed" 2>/dev/null)
    if test (count $answer) -gt 1
        printf '%s\n' $answer[2..-1]
    end
    if test "$answer[1]" = filenames
        __fish_complete_path "$typed"
    end
end

complete --command edict --no-files --arguments '(__edict_complete)'
