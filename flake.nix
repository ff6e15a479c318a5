{
  description = "edict: run any nix command on a remote host as if it ran here";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05-small";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);

      edictFor = pkgs:
        pkgs.rustPlatform.buildRustPackage {
          pname = "edict";
          version = cargoToml.package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.makeWrapper pkgs.installShellFiles ];
          # The integration tests start real sshd hosts in mount namespaces, which the build
          # sandbox cannot do; they run in CI (.ci/run). The unit tests run here.
          cargoTestFlags = [ "--bins" ];
          # rsync goes first on PATH: it keeps no user state, and the one a Mac has
          # (/usr/bin/rsync: openrsync, or rsync 2.6.9) cannot do what edict asks of it.
          # ssh and nix go last: the user's own ssh (with its config and agent) and the nix
          # that matches their daemon come first.
          # The manual page and the completions (bash, zsh, fish) come from the binary itself
          # (`edict man`, `edict completions SHELL`), when it can run here.
          postInstall = pkgs.lib.optionalString (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
            $out/bin/edict man > edict.1
            installManPage edict.1
            installShellCompletion --cmd edict \
              --bash <($out/bin/edict completions bash) \
              --zsh <($out/bin/edict completions zsh) \
              --fish <($out/bin/edict completions fish)
          '' + ''
            wrapProgram $out/bin/edict \
              --prefix PATH : ${pkgs.lib.makeBinPath [ pkgs.rsync ]} \
              --suffix PATH : ${pkgs.lib.makeBinPath [ pkgs.openssh pkgs.nix ]}
          '';
          meta = {
            description = "Run any nix command on a remote host as if it ran here";
            license = pkgs.lib.licenses.mit;
            mainProgram = "edict";
            platforms = systems;
          };
        };
    in
    {
      overlays.default = final: _prev: { edict = edictFor final; };

      packages = forAllSystems (pkgs: rec {
        edict = edictFor pkgs;
        default = edict;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/edict";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [ pkgs.cargo-nextest pkgs.clippy pkgs.rustfmt pkgs.openssh pkgs.rsync pkgs.nix pkgs.git ]
            ++ pkgs.lib.optionals pkgs.stdenv.isLinux [ pkgs.debootstrap pkgs.util-linux ];
        };
      });

      # For every system above, darwin included: on a Mac, `nix flake check` builds edict
      # there and runs its unit tests and clippy (the lab's tests are Linux-only).
      checks = forAllSystems (pkgs:
        let edict = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        in {
          build = edict.overrideAttrs { doCheck = false; };
          # the unit tests (doCheck is on by default in buildRustPackage)
          tests = edict;
          clippy = edict.overrideAttrs (old: {
            pname = "edict-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = "cargo clippy --all-targets --offline -- -D warnings";
            doCheck = false;
            installPhase = "touch $out";
            postInstall = "";
          });
          fmt = edict.overrideAttrs (old: {
            pname = "edict-fmt";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.rustfmt ];
            buildPhase = "cargo fmt --check";
            doCheck = false;
            installPhase = "touch $out";
            postInstall = "";
          });
        });
    };
}
