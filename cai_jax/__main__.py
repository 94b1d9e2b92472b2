from cai_jax.cli import main

main()
