"""The compiler: RPN source -> AST -> IR -> verified program -> PPDF bytes.

Passes live in their own modules, named for what they do: ``preprocess``, ``rpn_parser``,
``lower_rpn``, ``assembler`` (IR -> program bytes), ``verifier``, ``ppdf``; ``pipeline``
runs them in order and stops after the first pass that reports errors.
"""
